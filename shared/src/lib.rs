//! The library every function of the PPRL service calls into.
//!
//! - [`engine`]: the pure linkage core (encodings, packed storage layout, Dice kernel, blocking,
//!   shard planning, candidate files and their merge, the greedy solver and the result shapes).
//!   No I/O beyond byte slices, no AWS types: the offline `pprl` command uses exactly this.
//! - `service` (feature `service`): the ports (metadata store, object store, queue, credential
//!   issuer), the REST API router and the pipeline handlers (fan-out, compare, solve), written
//!   against the ports only.
//! - `aws` (feature `aws`): the AWS SDK adapters for those ports.

pub mod engine;

#[cfg(feature = "service")]
pub mod service;

#[cfg(feature = "aws")]
pub mod aws;
