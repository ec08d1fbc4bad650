//! The library every function of the PPRL service calls into.
//!
//! - [`engine`]: the pure linkage core (encodings, packed storage layout, Dice kernel, blocking,
//!   shard planning, candidate files and their merge, the greedy solver and the result shapes).
//!   No I/O beyond byte slices, no AWS types: the offline `pprl` command uses exactly this.
//! - [`aws_limits`]: AWS's request limits, in one place for the service and its client.
//! - [`wire`]: shapes of the REST API that the service writes and the `pprl` client reads.
//! - `service` (feature `service`): the ports (metadata store, object store, queue, credential
//!   issuer), the REST API router and the pipeline handlers (fan-out, compare, solve), written
//!   against the ports only.
//! - `aws` (feature `aws`): the AWS SDK adapters for those ports.

pub mod aws_limits;
pub mod engine;
pub mod wire;

#[cfg(feature = "service")]
pub mod service;

#[cfg(feature = "aws")]
pub mod aws;
