//! Kafka I/O: the shared idempotent producer and topic administration (`producer`), pooled replay
//! reads of stream topics (`reader`), the intake consumer with its dead-letter path and rebalance
//! callbacks (`intake`), and the changelog of stream records with its follower (`changelog`).

pub mod changelog;
pub mod intake;
pub mod producer;
pub mod reader;
