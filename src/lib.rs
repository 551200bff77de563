//! Sluice: resumable, persistent event streams on Kafka.
//!
//! A request such as `messaging:stream_messages:v1:requested` arrives on the intake topic (or over
//! HTTP/WebSocket), a handler runs in the worker pool, every chunk is stored in the stream's own
//! topic, and any number of SSE or WebSocket clients replay and tail it. See `ARCHITECTURE.md`.

pub mod app;
pub mod edge;
pub mod event;
pub mod handlers;
pub mod kafka;
pub mod metrics;
pub mod retention;
pub mod settings;
pub mod store;
pub mod stream;
pub mod telemetry;

pub use app::App;
pub use handlers::{HandlerError, Registry, StreamContext, StreamHandler};
pub use settings::Settings;
