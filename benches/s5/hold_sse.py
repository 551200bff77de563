#!/usr/bin/env python3
"""Hold N live Server-Sent Events subscribers from a separate process (S5 benchmark).

Standard library only (asyncio, raw sockets). Usage:

    python3 benches/s5/hold_sse.py --url URL --n N [--header 'Name: value']... [--rate 2000]

Protocol on stdout/stdin (one JSON object per line, flushed):

* after every connection has been attempted:
      {"held": H, "failed": F, "errors": [up to 5 distinct reasons]}
* then, for every stdin line ``stats``:
      {"held": H, "closed": C, "live": L, "events": E}
  held   = connections still open,
  closed = connections that were established and later closed by the server,
  live   = connections that received >= 1 data event since the previous
           ready/stats line,
  events = data events received (all connections) since the previous
           ready/stats line.
* EOF on stdin, SIGTERM or SIGINT: close every connection and exit 0.

Each established connection is just an asyncio BufferedProtocol with a few
slotted fields; all connections share one receive buffer and body bytes are
discarded once counted, so memory per held connection stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

# Linux IP_BIND_ADDRESS_NO_PORT: defer ephemeral port choice to connect() so a
# bound source address does not pin one port per (address) regardless of peer.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

MAX_HEADER_BYTES = 16 * 1024
RECV_BUFFER_BYTES = 16 * 1024
# Only the first bytes of an SSE line matter ("data" / empty); keep at most this
# many bytes of a line that spans reads.
LINE_PREFIX_KEEP = 8


class Stats:
    __slots__ = ("held", "closed", "failed", "errors", "events", "live", "epoch", "conns")

    def __init__(self) -> None:
        self.held = 0  # established and still open
        self.closed = 0  # established, then closed by the server
        self.failed = 0  # never established (connect error, bad status, ...)
        self.errors: list[str] = []  # up to 5 distinct reasons
        self.events = 0  # data events since the last report
        self.live = 0  # connections with >= 1 event since the last report
        self.epoch = 0  # incremented at every report
        self.conns: set[SSEProtocol] = set()

    def fail(self, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < 5 and reason not in self.errors:
            self.errors.append(reason)

    def next_epoch(self) -> tuple[int, int]:
        live, events = self.live, self.events
        self.live = 0
        self.events = 0
        self.epoch += 1
        return live, events


# Shared receive buffer: data_received processing is synchronous, so every
# connection can read into the same bytearray.
_SHARED_BUF = bytearray(RECV_BUFFER_BYTES)
_SHARED_VIEW = memoryview(_SHARED_BUF)

# Chunked transfer-encoding decoder states.
_CH_SIZE, _CH_DATA, _CH_CRLF, _CH_DONE = 0, 1, 2, 3


class SSEProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "stats",
        "transport",
        "head",  # bytearray while reading the response head, then None
        "ready",  # future resolved with None (ok) or an error string
        "established",
        "chunked",
        "ch_state",
        "ch_left",
        "ch_line",
        "line",  # prefix of the current (incomplete) SSE line
        "has_data",  # current SSE event has a data field
        "epoch",  # stats.epoch at the last counted event (-1: none)
    )

    def __init__(self, stats: Stats, ready: asyncio.Future) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.head: bytearray | None = bytearray()
        self.ready = ready
        self.established = False
        self.chunked = False
        self.ch_state = _CH_SIZE
        self.ch_left = 0
        self.ch_line = b""
        self.line = b""
        self.has_data = False
        self.epoch = -1

    # -- asyncio protocol callbacks -------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(_SHARED_VIEW[:nbytes])
        if self.head is not None:
            self._on_head(data)
        elif self.chunked:
            self._on_chunked(data)
        else:
            self._on_body(data)

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        st = self.stats
        if self.established:
            self.established = False
            st.held -= 1
            st.conns.discard(self)
            st.closed += 1
        elif not self.ready.done():
            self.ready.set_result(f"closed before response head: {exc!r}" if exc else "closed before response head")
        self.transport = None

    # -- parsing ---------------------------------------------------------
    def _reject(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    def _on_head(self, data: bytes) -> None:
        head = self.head
        assert head is not None
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEADER_BYTES:
                self._reject("response head too large")
            return
        rest = bytes(head[end + 4 :])
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        self.head = None
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1."):
            self._reject(f"bad status line: {lines[0][:80]!r}")
            return
        if status[1] != "200":
            self._reject(f"status {lines[0][9:][:60]}")
            return
        ctype = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "content-type":
                ctype = value.lower()
            elif name == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
        if not ctype.startswith("text/event-stream"):
            self._reject(f"content-type {ctype or '(none)'!r}")
            return
        self.established = True
        st = self.stats
        st.held += 1
        st.conns.add(self)
        if not self.ready.done():
            self.ready.set_result(None)
        if rest:
            if self.chunked:
                self._on_chunked(rest)
            else:
                self._on_body(rest)

    def _on_chunked(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            state = self.ch_state
            if state == _CH_DATA:
                take = min(self.ch_left, n - i)
                self._on_body(data[i : i + take])
                i += take
                self.ch_left -= take
                if self.ch_left == 0:
                    self.ch_state = _CH_CRLF
                    self.ch_line = b""
            elif state == _CH_SIZE or state == _CH_CRLF:
                j = data.find(b"\n", i)
                if j < 0:
                    self.ch_line = (self.ch_line + data[i:])[-64:]
                    return
                line = (self.ch_line + data[i:j]).strip()
                self.ch_line = b""
                i = j + 1
                if state == _CH_CRLF:
                    # the CRLF that ends a data chunk; next is a size line
                    self.ch_state = _CH_SIZE
                    if line:  # tolerate a missing CRLF: treat line as size
                        self._chunk_size(line)
                    continue
                if not line:
                    continue
                self._chunk_size(line)
            else:  # _CH_DONE: ignore trailers
                return

    def _chunk_size(self, line: bytes) -> None:
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            if self.transport is not None:
                self.transport.abort()
            self.ch_state = _CH_DONE
            return
        if size == 0:
            self.ch_state = _CH_DONE  # server ended the stream
            if self.transport is not None:
                self.transport.close()
        else:
            self.ch_left = size
            self.ch_state = _CH_DATA

    def _on_body(self, data: bytes) -> None:
        # SSE: lines end with \n (optionally \r\n); an empty line dispatches the
        # event, which counts if it carried a data field. Comments (":...")
        # and other fields do not count.
        parts = data.split(b"\n")
        last = parts.pop()
        if parts:
            first = True
            for part in parts:
                if first:
                    part = self.line + part
                    first = False
                if part[-1:] == b"\r":
                    part = part[:-1]
                if not part:
                    if self.has_data:
                        self.has_data = False
                        st = self.stats
                        st.events += 1
                        if self.epoch != st.epoch:
                            self.epoch = st.epoch
                            st.live += 1
                elif part[:4] == b"data" and (len(part) == 4 or part[4:5] == b":"):
                    self.has_data = True
            self.line = last[:LINE_PREFIX_KEEP]
        else:
            if len(self.line) < LINE_PREFIX_KEEP:
                self.line = (self.line + last)[:LINE_PREFIX_KEEP]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


async def open_one(
    i: int,
    host: str,
    port: int,
    request: bytes,
    spread: bool,
    timeout: float,
    stats: Stats,
    sem: asyncio.Semaphore,
) -> None:
    loop = asyncio.get_running_loop()
    sock = None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if spread:
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            except OSError:
                pass
            sock.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
        ready = loop.create_future()
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            transport, proto = await loop.create_connection(lambda: SSEProtocol(stats, ready), sock=sock)
            sock = None  # owned by the transport now
            transport.write(request)
            err = await ready
        if err is not None:
            stats.fail(err)
            transport.abort()
    except TimeoutError:
        stats.fail("timeout (connect or response head)")
        if sock is None:
            # transport exists: make sure it is torn down
            try:
                transport.abort()  # type: ignore[possibly-undefined]
            except Exception:
                pass
    except OSError as e:
        stats.fail(f"{type(e).__name__}: {e.strerror or e}")
    except Exception as e:  # pragma: no cover - defensive
        stats.fail(f"{type(e).__name__}: {e}")
    finally:
        if sock is not None:
            sock.close()
        sem.release()


def parse_url(url: str) -> tuple[str, int, str, str]:
    u = urlsplit(url)
    if u.scheme != "http":
        raise SystemExit(f"only http:// URLs are supported, got {url!r}")
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    host_header = u.netloc.rsplit("@", 1)[-1]
    return host, port, path, host_header


def build_request(path: str, host_header: str, headers: list[str]) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_header}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
        "User-Agent: sluice-s5-hold-sse/1",
    ]
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"bad --header {h!r}, expected 'Name: value'")
        lines.append(f"{name.strip()}: {value.strip()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def start_stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    # A daemon thread, so a blocked readline never delays shutdown.
    def run() -> None:
        try:
            while True:
                line = sys.stdin.readline()
                if not line:
                    break
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except Exception:
            pass
        try:
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:
            pass  # loop already closed

    threading.Thread(target=run, name="stdin", daemon=True).start()


async def main_async(args: argparse.Namespace) -> int:
    host, port, path, host_header = parse_url(args.url)
    if host == "localhost":
        host = "127.0.0.1"
    request = build_request(path, host_header, args.header)
    spread = host == "127.0.0.1" and not args.no_spread
    if spread and args.n > 250 * 254:
        raise SystemExit("--n too large for 127.0.x.y source spreading")

    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    sem = asyncio.Semaphore(args.inflight)
    tasks: list[asyncio.Task] = []

    async def connect_all() -> None:
        t0 = time.monotonic()
        for i in range(args.n):
            await sem.acquire()
            if args.rate > 0:
                delay = t0 + i / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(open_one(i, host, port, request, spread, args.timeout, stats, sem)))
        if tasks:
            await asyncio.wait(tasks)
        tasks.clear()

    stopper = asyncio.create_task(stop.wait())
    connector = asyncio.create_task(connect_all())
    await asyncio.wait({connector, stopper}, return_when=asyncio.FIRST_COMPLETED)

    if connector.done():
        connector.result()
        stats.next_epoch()
        emit({"held": stats.held, "failed": stats.failed, "errors": stats.errors})

        queue: asyncio.Queue = asyncio.Queue()
        start_stdin_reader(loop, queue)
        while not stop.is_set():
            getter = asyncio.create_task(queue.get())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            line = getter.result()
            if line is None:  # EOF
                break
            cmd = line.strip()
            if cmd == "stats":
                live, events = stats.next_epoch()
                emit({"held": stats.held, "closed": stats.closed, "live": live, "events": events})
            elif cmd in ("quit", "exit"):
                break
    else:
        connector.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(connector, *tasks, return_exceptions=True)

    stopper.cancel()
    for proto in list(stats.conns):
        proto.established = False  # not "closed by server"
        if proto.transport is not None:
            proto.transport.abort()
    stats.conns.clear()
    await asyncio.sleep(0)  # let connection_lost callbacks run
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--url", required=True, help="http://host:port/path?query of the SSE endpoint")
    ap.add_argument("--n", type=int, required=True, help="number of connections to hold")
    ap.add_argument("--header", action="append", default=[], help="extra request header 'Name: value' (repeatable)")
    ap.add_argument("--rate", type=float, default=2000.0, help="new connections per second (0 = unpaced)")
    ap.add_argument("--inflight", type=int, default=200, help="max connects awaiting a response head")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to connect and get the response head")
    ap.add_argument("--no-spread", action="store_true", help="do not bind 127.0.x.y source addresses")
    args = ap.parse_args()
    if args.n < 0 or args.inflight < 1:
        ap.error("--n must be >= 0 and --inflight >= 1")
    raise_nofile()
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
