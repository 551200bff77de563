/** Error codes Sluice answers with, and the client's own. */
export type SluiceErrorCode =
  // 400
  | "malformed_json"
  | "invalid_type"
  | "wrong_state"
  | "invalid_stream_id"
  | "invalid_last_event_id"
  | "last_event_id_ahead"
  // 401
  | "missing_token"
  | "invalid_token"
  | "token_expired"
  | "token_not_yet_valid"
  | "token_signature"
  | "token_audience"
  | "token_issuer"
  | "token_malformed"
  // 403
  | "forbidden"
  // 404
  | "not_found"
  // 409
  | "already_finished"
  | "not_running_here"
  // 410
  | "gone"
  // 413
  | "too_large"
  // 422
  | "unknown_handler"
  // 429
  | "rate_limited"
  | "too_many_connections_per_ip"
  // 503
  | "unavailable"
  | "stream_capacity"
  | "too_many_connections"
  | "too_many_subscribers"
  // the client's own: the connection failed (status 0), or the answer was not what Sluice sends
  | "network_error"
  | "protocol_error"
  // any other code a newer server may send
  | (string & {});

/** Any refusal from Sluice, or a failure to reach it. */
export class SluiceError extends Error {
  override name = "SluiceError";
  /** The HTTP status; 0 when no answer arrived (network error). */
  readonly status: number;
  /** Sluice's error code, such as `not_found`. */
  readonly code: SluiceErrorCode;

  constructor(status: number, code: SluiceErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.status = status;
    this.code = code;
  }

  /** Whether retrying the same call may succeed: no answer, a 429 or a 5xx. */
  get retryable(): boolean {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/** 400: the request, stream id or resume point is malformed. */
export class BadRequestError extends SluiceError {
  override name = "BadRequestError";
}
/** 401: the bearer token is missing or wrong. */
export class UnauthorizedError extends SluiceError {
  override name = "UnauthorizedError";
}
/** 403: the token does not grant this stream or type (unknown streams answer the same). */
export class ForbiddenError extends SluiceError {
  override name = "ForbiddenError";
}
/** 429: over a per-client limit (`rate_limited`, `too_many_connections_per_ip`). */
export class TooManyRequestsError extends SluiceError {
  override name = "TooManyRequestsError";
}
/** 404: no such stream. */
export class NotFoundError extends SluiceError {
  override name = "NotFoundError";
}
/** 409: the stream's state forbids it (`already_finished`, `not_running_here`). */
export class ConflictError extends SluiceError {
  override name = "ConflictError";
}
/** 410: the stream ended and its retention expired. */
export class GoneError extends SluiceError {
  override name = "GoneError";
}
/** 413: the request body is over the server's limit. */
export class PayloadTooLargeError extends SluiceError {
  override name = "PayloadTooLargeError";
}
/** 422: no handler is registered for the requested type. */
export class UnknownHandlerError extends SluiceError {
  override name = "UnknownHandlerError";
}
/** 5xx: Kafka or the store is unavailable, or the stream topic cap is reached. */
export class UnavailableError extends SluiceError {
  override name = "UnavailableError";
}
/** No answer: the connection could not be made or broke. `cause` holds the underlying error. */
export class ConnectionError extends SluiceError {
  override name = "ConnectionError";
}
/** The server answered something that is not Sluice's protocol. */
export class ProtocolError extends SluiceError {
  override name = "ProtocolError";
}

type ErrorClass = new (
  status: number,
  code: SluiceErrorCode,
  message: string,
  options?: { cause?: unknown },
) => SluiceError;

const BY_STATUS: Record<number, ErrorClass> = {
  400: BadRequestError,
  401: UnauthorizedError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  410: GoneError,
  413: PayloadTooLargeError,
  422: UnknownHandlerError,
  429: TooManyRequestsError,
};

/** The error class for an HTTP status. */
export function errorClassFor(status: number): ErrorClass {
  if (status >= 500) return UnavailableError;
  return BY_STATUS[status] ?? SluiceError;
}

/** Builds the typed error for a refused response, reading its `{"error":{code,message}}` body. */
export async function errorFromResponse(response: Response): Promise<SluiceError> {
  const status = response.status;
  let code: string = `http_${status}`;
  let message = `${status} ${response.statusText}`.trim();
  try {
    const text = await response.text();
    try {
      const body: unknown = JSON.parse(text);
      const err = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
      if (err && typeof err.code === "string") code = err.code;
      if (err && typeof err.message === "string") message = err.message;
    } catch {
      if (text.trim() !== "") message = `${message}: ${text.slice(0, 200)}`;
    }
  } catch {
    // The body could not be read; the status alone will do.
  }
  const Class = errorClassFor(status);
  return new Class(status, code, message);
}
