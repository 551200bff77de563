//! Kafka I/O: the shared idempotent producer and topic administration (`producer`), pooled replay
//! reads of stream topics (`reader`), and the intake consumer with its dead-letter path (`intake`).

pub mod intake;
pub mod producer;
pub mod reader;
