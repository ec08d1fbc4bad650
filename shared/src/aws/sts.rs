//! [`CredentialIssuer`] on STS: `AssumeRole` with an inline session policy, so the credentials a
//! data provider receives can only `s3:PutObject` under its own prefix of the upload bucket (the
//! effective permissions are the intersection of the role's and the session policy's). Locally
//! the STS is SeaweedFS's, which enforces session policies the same way.

use aws_sdk_sts::Client;
use aws_sdk_sts::error::DisplayErrorContext;
use aws_sdk_sts::primitives::DateTimeFormat;

use crate::service::ports::{CredentialError, CredentialIssuer, TemporaryCredentials};

/// STS bounds on `DurationSeconds` for AssumeRole.
const MIN_TTL_SECS: u64 = 900;
const MAX_TTL_SECS: u64 = 43_200;

#[derive(Clone, Debug)]
pub struct StsIssuer {
    pub client: Client,
    /// The role that may write the upload bucket; sessions narrow it to one prefix.
    pub role_arn: String,
}

impl StsIssuer {
    pub fn new(client: Client, role_arn: impl Into<String>) -> Self {
        StsIssuer { client, role_arn: role_arn.into() }
    }
}

/// The session policy: PutObject on `bucket/prefix*` and nothing else.
pub fn upload_policy(bucket: &str, prefix: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "UploadToOwnPrefixOnly",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}*")],
        }]
    })
    .to_string()
}

/// A session name STS accepts (`[\w+=,.@-]{2,64}`) that says whose upload it is, for CloudTrail.
fn session_name(prefix: &str) -> String {
    let cleaned: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .collect();
    let mut name = format!("upload-{}", cleaned.trim_matches('-'));
    name.truncate(64);
    name
}

impl CredentialIssuer for StsIssuer {
    async fn issue(&self, bucket: &str, prefix: &str, ttl_secs: u64) -> Result<TemporaryCredentials, CredentialError> {
        let duration = ttl_secs.clamp(MIN_TTL_SECS, MAX_TTL_SECS) as i32;
        let out = self
            .client
            .assume_role()
            .role_arn(&self.role_arn)
            .role_session_name(session_name(prefix))
            .policy(upload_policy(bucket, prefix))
            .duration_seconds(duration)
            .send()
            .await
            .map_err(|e| CredentialError(format!("AssumeRole {}: {}", self.role_arn, DisplayErrorContext(e))))?;
        let c = out.credentials.ok_or_else(|| CredentialError("AssumeRole returned no credentials".into()))?;
        let expiration = c
            .expiration
            .fmt(DateTimeFormat::DateTime)
            .map_err(|e| CredentialError(format!("credential expiration: {e}")))?;
        Ok(TemporaryCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
            expiration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_allows_only_put_under_the_prefix() {
        let p: serde_json::Value = serde_json::from_str(&upload_policy("uploads", "abc/1/")).unwrap();
        assert_eq!(p["Statement"][0]["Action"], serde_json::json!(["s3:PutObject"]));
        assert_eq!(p["Statement"][0]["Resource"][0], "arn:aws:s3:::uploads/abc/1/*");
    }

    #[test]
    fn session_names_are_valid() {
        let name = session_name(&format!("{}/12/", "f".repeat(48)));
        assert!(name.len() <= 64 && name.len() >= 2);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)));
    }
}
