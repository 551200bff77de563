/**
 * An incremental parser for `text/event-stream`, following the WHATWG HTML "server-sent events"
 * interpretation rules: lines end in CRLF, LF or CR (also when a CRLF pair is split between two
 * chunks), `:` starts a comment, `data:` lines join with `\n`, an empty line dispatches, a
 * leading U+FEFF is dropped, and an event left unterminated when the stream ends is discarded.
 */

/** One dispatched event. */
export interface SseMessage {
  /** The `event:` field, or `"message"` when the block had none. */
  event: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /**
   * The `id:` field if this block carried one (an empty string resets the id). `undefined` when
   * the block had no `id:` line; the stream's current id is then {@link SseParser.lastEventId}.
   */
  id: string | undefined;
  /** The stream's last event id after this block (the spec's "last event ID buffer"). */
  lastEventId: string;
}

/** Parses a text/event-stream fed in arbitrary pieces. */
export class SseParser {
  /** The reconnection time in milliseconds from the latest valid `retry:` field, if any. */
  retry: number | undefined = undefined;
  /** The last event id seen (`id:` fields persist across events until changed). */
  lastEventId = "";

  #buffer = "";
  #pendingCR = false;
  #started = false;
  #data = "";
  #hasData = false;
  #event = "";
  #blockId: string | undefined = undefined;

  /** Feeds decoded text; returns the events completed by it, in order. */
  push(text: string): SseMessage[] {
    const out: SseMessage[] = [];
    if (!this.#started && text.length > 0) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.#pendingCR && text.length > 0) {
      // The previous chunk ended in CR: an LF here belongs to the same line end.
      this.#pendingCR = false;
      if (text.charCodeAt(0) === 0x0a) text = text.slice(1);
    }
    let buf = this.#buffer + text;
    // The kept buffer holds no line end, so the search resumes where the new text begins.
    let scanned = this.#buffer.length;
    let start = 0;
    for (;;) {
      let end = -1;
      for (let i = Math.max(start, scanned); i < buf.length; i++) {
        const c = buf.charCodeAt(i);
        if (c === 0x0a || c === 0x0d) {
          end = i;
          break;
        }
      }
      if (end < 0) break;
      scanned = 0;
      const line = buf.slice(start, end);
      if (buf.charCodeAt(end) === 0x0d) {
        if (end + 1 < buf.length) {
          start = buf.charCodeAt(end + 1) === 0x0a ? end + 2 : end + 1;
        } else {
          this.#pendingCR = true;
          start = end + 1;
        }
      } else {
        start = end + 1;
      }
      const message = this.#line(line);
      if (message) out.push(message);
    }
    this.#buffer = buf.slice(start);
    buf = "";
    return out;
  }

  /**
   * Ends the stream. Per the spec an event that was not terminated by an empty line is not
   * dispatched; the parser is reset for a new connection (keeping `retry` and `lastEventId`).
   */
  end(): void {
    this.#buffer = "";
    this.#pendingCR = false;
    this.#started = false;
    this.#resetBlock();
  }

  #resetBlock(): void {
    this.#data = "";
    this.#hasData = false;
    this.#event = "";
    this.#blockId = undefined;
  }

  #line(line: string): SseMessage | undefined {
    if (line.length === 0) return this.#dispatch();
    if (line.charCodeAt(0) === 0x3a /* ':' */) return undefined;
    const colon = line.indexOf(":");
    let field: string;
    let value: string;
    if (colon < 0) {
      field = line;
      value = "";
    } else {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.#event = value;
        break;
      case "data":
        this.#data = this.#hasData ? `${this.#data}\n${value}` : value;
        this.#hasData = true;
        break;
      case "id":
        if (!value.includes("\u0000")) {
          this.lastEventId = value;
          this.#blockId = value;
        }
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
    return undefined;
  }

  #dispatch(): SseMessage | undefined {
    if (!this.#hasData) {
      // No data: nothing is dispatched, but an `id:` in the block still took effect.
      this.#resetBlock();
      return undefined;
    }
    const message: SseMessage = {
      event: this.#event === "" ? "message" : this.#event,
      data: this.#data,
      id: this.#blockId,
      lastEventId: this.lastEventId,
    };
    this.#resetBlock();
    return message;
  }
}
