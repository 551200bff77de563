//! Sluice's wire formats, kept free of Kafka, RocksDB and the network so that every decoder of
//! untrusted input can be fuzzed and property-tested on its own: the event type grammar and
//! request JSON (`event`), stored stream records (`stored`), client frames and resume points
//! (`frames`), and access tokens (`token`).

pub mod event;
pub mod frames;
pub mod stored;
pub mod token;
