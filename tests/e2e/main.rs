//! End-to-end tests: real HTTP against the api function, real S3/SQS/DynamoDB protocol on the
//! local stack, and fan-out, compare and solve driven by real events through the local runner.
//! Run through `scripts/test.sh`, which starts and stops the stack.

mod helpers;
mod linkage;
mod lifecycle;
mod faults;
mod uploads;
mod pulls;
mod secrets;
mod api_contract;
mod limits;
mod cli_sequence;
mod beyond;
mod metrics;
mod meta_contract;
