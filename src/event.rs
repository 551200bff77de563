//! The event model, re-exported from `sluice-wire`: the `{service}:{action}:v{N}:{state}` type
//! grammar, stream ids, the JSON envelope, and requests parsed from untrusted bytes.

pub use sluice_wire::event::*;
