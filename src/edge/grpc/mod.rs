//! The gRPC edge (tonic) on `grpc.listen`: the `sluice.v1.Streams` service, `grpc.health.v1` and
//! server reflection, so `grpcurl` works with no proto file.
//!
//! It shares the HTTP edge's state and rules: the same tokens (`authorization: Bearer` metadata),
//! the same connection caps,
//! the same validation, and the same error codes, carried as a `google.rpc.ErrorInfo` (domain
//! `sluice`, reason = the HTTP API's code, metadata `http_status`) in each refusal's details.

mod convert;
mod service;

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::access::Caller;
use super::{ApiError, Shared};

/// The generated `sluice.v1` messages, service and client.
pub mod proto {
    tonic::include_proto!("sluice.v1");

    /// The encoded descriptors of `sluice.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");
}

pub use service::StreamsService;

/// The `ErrorInfo` domain of Sluice's refusals.
pub const ERROR_DOMAIN: &str = "sluice";

/// The gRPC code of an API refusal.
pub fn code_of(err: &ApiError) -> Code {
    match err {
        ApiError::BadRequest { .. } | ApiError::PayloadTooLarge(_) => Code::InvalidArgument,
        ApiError::Unauthorized(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) => Code::PermissionDenied,
        ApiError::TooMany { .. } | ApiError::Overloaded { .. } => Code::ResourceExhausted,
        ApiError::NotFound(_) | ApiError::Gone(_) => Code::NotFound,
        ApiError::Conflict { .. } => Code::FailedPrecondition,
        ApiError::Unprocessable { .. } => Code::Unimplemented,
        ApiError::Unavailable(_) => Code::Unavailable,
        ApiError::Capacity(_) => Code::ResourceExhausted,
    }
}

/// A gRPC status with the HTTP API's code in its `ErrorInfo`.
pub fn status_of(err: &ApiError) -> Status {
    detailed(
        code_of(err),
        err.code(),
        err.status().as_u16(),
        err.to_string(),
    )
}

fn detailed(code: Code, reason: &str, http_status: u16, message: String) -> Status {
    let info = ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        HashMap::from([("http_status".to_owned(), http_status.to_string())]),
    );
    Status::with_error_details(code, message, info)
}

/// Converts a refusal to a status, and logs and counts it like the HTTP edge does.
pub(crate) fn refuse(state: &Shared, rpc: &str, err: ApiError) -> Status {
    state
        .metrics
        .edge_rejected(err.code(), &format!("grpc {rpc}: {err}"));
    status_of(&err)
}

/// Authenticates `authorization: Bearer <token>` metadata and attaches the `Caller`.
#[derive(Clone)]
pub struct Auth {
    state: Shared,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(super::bearer)
            .map(str::to_owned);
        match self.state.auth.identify(token.as_deref()) {
            Ok(identity) => {
                let caller = Caller::new(identity, req.remote_addr());
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Err(e) => Err(refuse(&self.state, "auth", e)),
        }
    }
}

/// A bound, not yet serving, gRPC listener.
pub struct GrpcServer {
    listener: TcpListener,
    state: Shared,
}

impl GrpcServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, state: Shared) -> std::io::Result<GrpcServer> {
        Ok(GrpcServer {
            listener: TcpListener::bind(addr).await?,
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` fires.
    pub async fn serve(self, stop: CancellationToken) -> anyhow::Result<()> {
        use proto::streams_server::StreamsServer;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<StreamsServer<StreamsService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo, so grpcurl prints refusal details instead of raw bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // Bodies over the intake limit are refused by Sluice itself (too_large, like HTTP);
        // tonic's own limit only stops absurd messages before they are buffered.
        let limit = self
            .state
            .intake
            .max_request_bytes
            .saturating_mul(4)
            .max(64 * 1024);
        let streams = StreamsServer::new(StreamsService::new(self.state.clone()))
            .max_decoding_message_size(limit);
        let auth = Auth {
            state: self.state.clone(),
        };
        let on_stop = {
            let reporter = reporter.clone();
            async move {
                stop.cancelled().await;
                reporter
                    .set_not_serving::<StreamsServer<StreamsService>>()
                    .await;
            }
        };
        let limits = &self.state.limits;
        // The HTTP edge's limits, in gRPC terms: time to a response head, concurrent calls per
        // connection, pings that drop a peer which stopped answering, and the header list size.
        tonic::transport::Server::builder()
            .timeout(limits.request_timeout)
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(limits.ws_idle_timeout / 3))
            .http2_keepalive_timeout(Some(limits.ws_idle_timeout / 3))
            .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).ok())
            .add_service(health)
            .add_service(reflection)
            .add_service(InterceptedService::new(streams, auth))
            .serve_with_incoming_shutdown(incoming(self.listener, self.state.clone()), on_stop)
            .await?;
        Ok(())
    }
}

/// Accepted connections with `TCP_NODELAY` set (tonic ignores its own setting for an incoming
/// stream): each event leaves at once instead of waiting on Nagle and the client's delayed ACK.
/// Connections over the edge's caps are closed at once (gRPC has no status to send before the
/// HTTP/2 handshake), logged and counted; admitted ones hold their slot until they close.
fn incoming(
    listener: tokio::net::TcpListener,
    state: Shared,
) -> impl futures::Stream<Item = std::io::Result<super::serve::Gated>> {
    futures::StreamExt::filter_map(TcpListenerStream::new(listener), move |accepted| {
        let state = state.clone();
        async move {
            let tcp = match accepted {
                Ok(tcp) => tcp,
                Err(e) => return Some(Err(e)),
            };
            let peer = tcp.peer_addr().ok()?;
            match state.gate.admit(peer.ip()) {
                Ok(admitted) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    Some(Ok(super::serve::Gated::new(tcp, admitted)))
                }
                Err(refusal) => {
                    let err = refusal.error(&state.limits);
                    state
                        .metrics
                        .edge_rejected(err.code(), &format!("grpc {peer}: {err}"));
                    None
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_refusal_maps_to_a_grpc_code_with_its_http_code_and_status_in_details() {
        let conflict = || ApiError::Conflict {
            code: "already_finished",
            message: "m".into(),
        };
        let cases = [
            (
                ApiError::BadRequest {
                    code: "invalid_type",
                    message: "m".into(),
                },
                Code::InvalidArgument,
                400,
            ),
            (
                ApiError::PayloadTooLarge("m".into()),
                Code::InvalidArgument,
                413,
            ),
            (
                ApiError::Unauthorized("token_expired"),
                Code::Unauthenticated,
                401,
            ),
            (ApiError::Forbidden("m".into()), Code::PermissionDenied, 403),
            (
                ApiError::TooMany {
                    code: "rate_limited",
                    message: "m".into(),
                    retry_after: 1,
                },
                Code::ResourceExhausted,
                429,
            ),
            (
                ApiError::Overloaded {
                    code: "too_many_subscribers",
                    message: "m".into(),
                },
                Code::ResourceExhausted,
                503,
            ),
            (ApiError::NotFound("m".into()), Code::NotFound, 404),
            (ApiError::Gone("m".into()), Code::NotFound, 410),
            (conflict(), Code::FailedPrecondition, 409),
            (
                ApiError::Unprocessable {
                    code: "unknown_handler",
                    message: "m".into(),
                },
                Code::Unimplemented,
                422,
            ),
            (ApiError::Unavailable("m".into()), Code::Unavailable, 503),
            (ApiError::Capacity("m".into()), Code::ResourceExhausted, 503),
        ];
        for (err, code, http) in cases {
            let status = status_of(&err);
            assert_eq!(status.code(), code, "{err:?}");
            let info = status.get_error_details().error_info().cloned().unwrap();
            assert_eq!(info.reason, err.code());
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.metadata["http_status"], http.to_string());
            assert_eq!(err.status().as_u16(), http);
        }
    }
}
