//! Running and following one stream: the worker pool admits and launches runs, the provider runs
//! one stream from `started` to its terminal event, the writer stores its events in order, the hub
//! fans acknowledged events out live, and subscriptions merge replay with the live tail.

pub mod hub;
pub mod ownership;
pub mod pool;
pub mod provider;
pub mod records;
pub mod remote;
pub mod subscription;
pub mod writer;
