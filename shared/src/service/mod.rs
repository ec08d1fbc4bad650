//! The service layer: what the four functions do, written against narrow ports.
//!
//! - [`model`]: projects, parties, runs and their states, as stored and as reported.
//! - [`ports`]: the traits the AWS adapters (and the in-memory ones for unit tests) implement.
//! - [`api`]: the REST API v1 router (served by lambda_http in Lambda, by axum locally).
//! - [`pipeline`]: fan-out (ingest, run start, planning), compare (one shard), solve (merge, solve,
//!   publish) and the dead-letter handler.
//! - [`pull_policy`]: the rules for pulling uploads from object stores that clients name.
//! - [`keys`]: the object-key layout of the working bucket, in one place.
//! - [`table`]: the metadata table's items, in one place (written by `aws::dynamo`, sized by both
//!   metadata adapters).
//! - [`aws_limits`]: AWS's request limits, checked by every adapter where requests are built.
//! - [`meta_contract`]: the metadata stores' shared contract, a test suite both stores run.
//! - [`retry`]: in-process retries of DynamoDB transaction conflicts.
//! - [`telemetry`] and [`metrics`]: what operators see: logs, and metrics in CloudWatch's Embedded
//!   Metric Format.

pub mod api;
/// Re-exported where the service's adapters have always found it (the module itself needs no
/// feature, for the `pprl` client).
pub use crate::aws_limits;
pub mod blob_stream;
pub mod pull_policy;
pub mod config;
pub mod keys;
pub mod lambda;
pub mod memory;
pub mod meta_contract;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod ports;
pub mod retry;
pub mod stored_upload;
pub mod table;
pub mod telemetry;
pub mod time;
pub mod tokens;
