//! Multipart upload to the service's upload store with the temporary credentials of
//! `authorize-external-upload`.
//!
//! Why aws-sdk-s3 rather than a hand-written SigV4 client: the workspace already builds it (the
//! functions use it), it signs session-token requests, retries throttling and transient
//! network errors with backoff, and talks to AWS S3, SeaweedFS and MinIO alike. What it does
//! not do for us is part sizing, bounded memory and resumable progress, which live here:
//!
//! - the file is cut into parts of `part_bytes` (grown so that 10 000 parts cover it), each
//!   read from disk only when it is sent, so memory is `concurrency × part_bytes`;
//! - each part is retried on its own (up to [`PART_ATTEMPTS`] times, with backoff) on top of
//!   the SDK's retries, so a flaky link costs one part, not the file;
//! - a failure that persists aborts the multipart upload (the bucket's lifecycle rule removes
//!   anything an interrupted client leaves).
//!
//! The credentials can only `PutObject` under the party's prefix; multipart upload needs no more.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;

use crate::client::UploadGrant;
use crate::progress::ProgressBar;

/// S3's limits on parts.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// Attempts per part before the upload is given up.
pub const PART_ATTEMPTS: u32 = 5;

/// Where an object's bytes come from: a file on disk (read part by part) or memory.
pub enum Body {
    File { path: std::path::PathBuf, len: u64 },
    Memory(bytes::Bytes),
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::File { len, .. } => *len,
            Body::Memory(b) => b.len() as u64,
        }
    }

    fn read(&self, offset: u64, len: usize) -> anyhow::Result<bytes::Bytes> {
        match self {
            Body::Memory(b) => Ok(b.slice(offset as usize..offset as usize + len)),
            Body::File { path, .. } => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset).with_context(|| format!("reading {} at byte {offset}", path.display()))?;
                Ok(bytes::Bytes::from(buf))
            }
        }
    }
}

pub struct Uploader {
    client: aws_sdk_s3::Client,
    bucket: String,
    runtime: tokio::runtime::Runtime,
    pub part_bytes: u64,
    pub concurrency: usize,
}

impl Uploader {
    /// A client for the grant's endpoint. `endpoint_override` replaces the host the service
    /// announced (anonlink-client's `UPLOAD_OBJECT_STORE_SERVER`), for stores reached through a
    /// different name from the client's network.
    pub fn new(grant: &UploadGrant, endpoint_override: Option<&str>, part_bytes: u64, concurrency: usize) -> anyhow::Result<Self> {
        let host = endpoint_override.unwrap_or(&grant.upload.endpoint);
        let endpoint = if host.contains("://") {
            host.to_string()
        } else {
            format!("{}://{host}", if grant.upload.secure { "https" } else { "http" })
        };
        let c = &grant.credentials;
        let credentials = Credentials::new(&c.access_key_id, &c.secret_access_key, Some(c.session_token.clone()), None, "pprl-upload");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(credentials)
            .build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the upload runtime")?;
        Ok(Uploader {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: grant.upload.bucket.clone(),
            runtime,
            part_bytes: part_bytes.max(MIN_PART_BYTES),
            concurrency: concurrency.max(1),
        })
    }

    /// Uploads `body` to `key` with user metadata (e.g. `hash-count`, `hash-size`).
    pub fn upload(&self, key: &str, body: Body, metadata: &[(&str, String)], progress: &mut ProgressBar, label: &str) -> anyhow::Result<()> {
        let len = body.len();
        let part_bytes = self.part_bytes.max(len.div_ceil(MAX_PARTS));
        if len <= part_bytes {
            // One request: no multipart bookkeeping for small objects.
            let bytes = body.read(0, len as usize)?;
            self.runtime.block_on(async {
                let mut attempt = 0;
                loop {
                    let mut req = self.client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(bytes.clone()));
                    for (k, v) in metadata {
                        req = req.metadata(*k, v);
                    }
                    match req.send().await {
                        Ok(_) => break Ok(()),
                        Err(e) if attempt + 1 < PART_ATTEMPTS && is_retryable(&e) => {
                            attempt += 1;
                            tokio::time::sleep(backoff(attempt)).await;
                        }
                        Err(e) => break Err(anyhow::anyhow!("uploading {key}: {}", DisplayErrorContext(e))),
                    }
                }
            })?;
            progress.update(len, len, label);
            return Ok(());
        }
        self.runtime.block_on(self.multipart(key, Arc::new(body), part_bytes, metadata, progress, label))
    }

    async fn multipart(&self, key: &str, body: Arc<Body>, part_bytes: u64, metadata: &[(&str, String)], progress: &mut ProgressBar, label: &str) -> anyhow::Result<()> {
        let len = body.len();
        let mut start = self.client.create_multipart_upload().bucket(&self.bucket).key(key);
        for (k, v) in metadata {
            start = start.metadata(*k, v);
        }
        let started = start.send().await.map_err(|e| anyhow::anyhow!("starting the upload of {key}: {}", DisplayErrorContext(e)))?;
        let upload_id = started.upload_id().context("the object store returned no upload id")?.to_string();
        let parts = len.div_ceil(part_bytes);
        let mut done_bytes = 0u64;
        let mut completed = Vec::with_capacity(parts as usize);
        let mut results = futures::stream::iter(1..=parts)
            .map(|number| {
                let body = Arc::clone(&body);
                let upload_id = upload_id.clone();
                async move {
                    let offset = (number - 1) * part_bytes;
                    let size = part_bytes.min(len - offset) as usize;
                    let bytes = tokio::task::spawn_blocking(move || body.read(offset, size)).await??;
                    let etag = self.upload_part(key, &upload_id, number as i32, bytes).await?;
                    anyhow::Ok((number as i32, etag, size as u64))
                }
            })
            .buffer_unordered(self.concurrency);
        let mut failure = None;
        while let Some(result) = results.next().await {
            match result {
                Ok((number, etag, size)) => {
                    completed.push(CompletedPart::builder().part_number(number).e_tag(etag).build());
                    done_bytes += size;
                    progress.update(done_bytes, len, label);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(results);
        if let Some(e) = failure {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
            return Err(e);
        }
        completed.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("completing the upload of {key}: {}", DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, bytes: bytes::Bytes) -> anyhow::Result<String> {
        let mut attempt = 0;
        loop {
            let sent = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(bytes.clone()))
                .send()
                .await;
            match sent {
                Ok(out) => return out.e_tag().map(str::to_string).context("the object store returned no ETag for a part"),
                Err(e) if attempt + 1 < PART_ATTEMPTS && is_retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => bail!("uploading part {number} of {key}: {}", DisplayErrorContext(e)),
            }
        }
    }
}

/// Access denied or an expired token will not get better by retrying; the rest may.
fn is_retryable<E: aws_sdk_s3::error::ProvideErrorMetadata, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> bool {
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(se) => !matches!(
            se.err().code(),
            Some("AccessDenied" | "ExpiredToken" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "NoSuchBucket" | "NoSuchUpload" | "InvalidToken")
        ),
        _ => true,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt.min(6)))
}
