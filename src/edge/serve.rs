//! The HTTP server loop: accepts TCP connections, admits them through the connection caps, and
//! serves each with hyper (HTTP/1.1 with upgrades and a header-read timeout, or HTTP/2 with bounded
//! concurrent streams and keep-alive pings) and the caller's address as `ConnectInfo`. A
//! connection over a cap is answered with a one-off `429`/`503` JSON response and closed. Request
//! heads are bounded by `limits.max_header_bytes` (431). A connection that has not begun a request
//! within `limits.header_read_timeout` of its accept (an idle socket, a partial HTTP/2 preface) is
//! closed: hyper's own header timeout starts only once it has told the protocols apart. On `stop`,
//! open connections finish their current requests and close; streaming bodies end because their
//! subscriptions end.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::limits::Admitted;
use super::{ApiError, Shared};

/// Refused connections being answered at once; past it a refused connection is just closed.
const MAX_REFUSING: usize = 256;
/// How long a refused connection is given to read its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// An admitted TCP connection: it holds its connection slots until it is dropped.
pub struct Gated {
    tcp: TcpStream,
    _admitted: Admitted,
}

impl Gated {
    /// Wraps an admitted connection.
    pub fn new(tcp: TcpStream, admitted: Admitted) -> Gated {
        Gated {
            tcp,
            _admitted: admitted,
        }
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Gated {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

/// Serves `router` on `listener` until `stop`, then lets open connections finish.
pub async fn run(listener: TcpListener, router: Router, state: Shared, stop: CancellationToken) {
    let limits = &state.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    // HTTP/2 without TLS (prior knowledge): bounded concurrency, and a peer that stops answering
    // pings is dropped like an idle WebSocket.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.ws_idle_timeout / 3)
        .keep_alive_timeout(limits.ws_idle_timeout / 3);
    let connections = TaskTracker::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match state.gate.admit(peer.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                let err = refusal.error(&state.limits);
                state
                    .metrics
                    .edge_rejected(err.code(), &format!("http {peer}: {err}"));
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    connections.spawn(async move {
                        answer_and_close(tcp, &err).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let io = TokioIo::new(Gated::new(tcp, admitted));
        let begun = Arc::new(AtomicBool::new(false));
        let first = begun.clone();
        let svc = router
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                first.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let svc = TowerToHyperService::new(svc);
        let builder = builder.clone();
        let stop = stop.clone();
        let state = state.clone();
        connections.spawn(async move {
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            let wait = state.limits.header_read_timeout;
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = no_request_within(&begun, wait) => {
                    state.metrics.edge_rejected(
                        "header_timeout",
                        &format!("http {peer}: no request within {wait:?} of connecting (limits.header_read_timeout)"),
                    );
                    return;
                }
                r = conn.as_mut() => r,
            };
            match result {
                Err(e) if head_too_large(e.as_ref()) => {
                    let limit = state.limits.max_header_bytes;
                    state.metrics.edge_rejected(
                        "header_too_large",
                        &format!("http {peer}: request head over {limit} bytes (limits.max_header_bytes), answered 431"),
                    );
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error")
                }
                Ok(()) => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Whether a connection ended because a request head outgrew the read buffer (hyper answered 431).
fn head_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_parse_too_large)
}

/// Resolves `wait` after it is called if no request has begun by then; never otherwise.
async fn no_request_within(begun: &AtomicBool, wait: Duration) {
    tokio::time::sleep(wait).await;
    if begun.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Writes a refusal as a complete HTTP/1.1 response and closes the connection, reading (and
/// discarding) what the client sent for a moment so the close does not reset the answer away.
async fn answer_and_close(mut tcp: TcpStream, err: &ApiError) {
    let body = err.body().to_string();
    let status = err.status();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        err.retry_after().unwrap_or(1),
    );
    let linger = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}
