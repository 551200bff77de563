//! Kafka I/O: topic administration and the shared idempotent producer (`producer`), the
//! transactional writer of each owned intake partition (`txn`), pooled replay reads of stream
//! topics (`reader`), the intake consumer with its dead-letter path and rebalance callbacks
//! (`intake`), and the changelog of stream records with its follower (`changelog`).

pub mod changelog;
pub mod intake;
pub mod producer;
pub mod reader;
pub mod txn;
