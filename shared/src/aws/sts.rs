//! [`CredentialIssuer`] on STS: `AssumeRole` with an inline session policy, so the credentials a
//! data provider receives can only `s3:PutObject` under its own prefix of the upload bucket, and
//! those a result holder receives can only `s3:GetObject` one result object of the working bucket
//! (the effective permissions are the intersection of the role's and the session policy's).
//! Locally the upload store's STS is SeaweedFS's, which enforces session policies the same way;
//! the working bucket's is LocalStack's, which issues credentials but enforces no IAM.

use aws_sdk_sts::Client;
use aws_sdk_sts::error::DisplayErrorContext;
use aws_sdk_sts::primitives::DateTimeFormat;

use crate::service::ports::{CredentialError, CredentialIssuer, TemporaryCredentials};

/// STS bounds on `DurationSeconds` for AssumeRole.
const MIN_TTL_SECS: u64 = 900;
const MAX_TTL_SECS: u64 = 43_200;

/// A role to assume, and the STS that serves the bucket it grants.
#[derive(Clone, Debug)]
pub struct AssumableRole {
    pub client: Client,
    pub role_arn: String,
}

#[derive(Clone, Debug)]
pub struct StsIssuer {
    /// May write the upload bucket; sessions narrow it to one party's prefix.
    pub upload: AssumableRole,
    /// May read the working bucket's results; sessions narrow it to one object. `None` when
    /// not configured: then no download credentials are issued.
    pub download: Option<AssumableRole>,
}

/// The AWS partition (`aws`, `aws-cn`, `aws-us-gov`) a role lives in, from its ARN, so the
/// session policies name buckets in the same partition.
pub fn partition_of(role_arn: &str) -> &str {
    role_arn.split(':').nth(1).filter(|p| !p.is_empty()).unwrap_or("aws")
}

/// The session policy: PutObject on `bucket/prefix*` and nothing else.
pub fn upload_policy(partition: &str, bucket: &str, prefix: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "UploadToOwnPrefixOnly",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": [format!("arn:{partition}:s3:::{bucket}/{prefix}*")],
        }]
    })
    .to_string()
}

/// The session policy: GetObject on `bucket/key` and nothing else.
pub fn download_policy(partition: &str, bucket: &str, key: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "ReadOneResultOnly",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [format!("arn:{partition}:s3:::{bucket}/{key}")],
        }]
    })
    .to_string()
}

/// A session name STS accepts (`[\w+=,.@-]{2,64}`) that says whose grant it is, for CloudTrail.
fn session_name(kind: &str, prefix: &str) -> String {
    let cleaned: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .collect();
    let mut name = format!("{kind}-{}", cleaned.trim_matches('-'));
    name.truncate(64);
    name
}

impl AssumableRole {
    async fn assume(&self, session: String, policy: String, ttl_secs: u64) -> Result<TemporaryCredentials, CredentialError> {
        let duration = ttl_secs.clamp(MIN_TTL_SECS, MAX_TTL_SECS) as i32;
        let out = self
            .client
            .assume_role()
            .role_arn(&self.role_arn)
            .role_session_name(session)
            .policy(policy)
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

impl CredentialIssuer for StsIssuer {
    async fn issue(&self, bucket: &str, prefix: &str, ttl_secs: u64) -> Result<TemporaryCredentials, CredentialError> {
        self.upload.assume(session_name("upload", prefix), upload_policy(partition_of(&self.upload.role_arn), bucket, prefix), ttl_secs).await
    }

    async fn issue_download(&self, bucket: &str, key: &str, ttl_secs: u64) -> Result<Option<TemporaryCredentials>, CredentialError> {
        let Some(role) = &self.download else { return Ok(None) };
        role.assume(session_name("result", key), download_policy(partition_of(&role.role_arn), bucket, key), ttl_secs).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_allows_only_put_under_the_prefix() {
        let p: serde_json::Value = serde_json::from_str(&upload_policy("aws", "uploads", "abc/1/")).unwrap();
        assert_eq!(p["Statement"][0]["Action"], serde_json::json!(["s3:PutObject"]));
        assert_eq!(p["Statement"][0]["Resource"][0], "arn:aws:s3:::uploads/abc/1/*");
        assert_eq!(partition_of("arn:aws-cn:iam::123456789012:role/upload"), "aws-cn");
        assert_eq!(partition_of("not an arn"), "aws");
    }

    #[test]
    fn download_policy_allows_only_get_of_the_one_object() {
        let p: serde_json::Value = serde_json::from_str(&download_policy("aws", "work", "results/p/r/similarity_scores.bin")).unwrap();
        assert_eq!(p["Statement"].as_array().map(Vec::len), Some(1));
        assert_eq!(p["Statement"][0]["Action"], serde_json::json!(["s3:GetObject"]));
        assert_eq!(p["Statement"][0]["Resource"], serde_json::json!(["arn:aws:s3:::work/results/p/r/similarity_scores.bin"]));
    }

    #[test]
    fn session_names_are_valid() {
        let name = session_name("upload", &format!("{}/12/", "f".repeat(48)));
        assert!(name.len() <= 64 && name.len() >= 2);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)));
    }
}
