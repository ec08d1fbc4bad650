//! Shapes of the REST API that both sides of it read: the service writes them and the `pprl`
//! client reads them. One definition, outside the `service` feature (the client builds without
//! the service layer), so the two cannot disagree about a field.

use serde::{Deserialize, Serialize};

/// Temporary credentials a data provider uses to upload straight to the upload bucket (and to
/// download a result), as `authorize-external-upload` hands them out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TemporaryCredentials {
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: String,
    #[serde(rename = "SessionToken")]
    pub session_token: String,
    /// ISO 8601; empty where an answer leaves it out.
    #[serde(rename = "Expiration", default)]
    pub expiration: String,
}
