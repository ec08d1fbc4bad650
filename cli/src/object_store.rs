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
//!   anything an interrupted client leaves);
//! - the temporary credentials are renewed while the upload runs: before each request, when they
//!   have less than `renew_before` left, and after an answer saying they expired, the client asks
//!   `authorize-external-upload` again (the party's token stays valid until the upload is
//!   posted) and continues the same multipart upload, signed with the new credentials. A multi-GB
//!   upload can take longer than their lifetime (15 min to 12 h, 1 h when STS role-chains).
//!
//! The credentials can only `PutObject` under the party's prefix; multipart upload needs no more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;
use shared::aws_limits::{S3_MAX_PARTS, S3_MIN_PART_BYTES};

use crate::client::UploadGrant;
use crate::progress::ProgressBar;

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

/// Asks the service for fresh credentials for the same prefix (`authorize-external-upload`
/// again). Blocking; called off the upload's async tasks.
pub type Authorize = Arc<dyn Fn() -> anyhow::Result<UploadGrant> + Send + Sync>;
/// The clock credentials are judged by (a parameter so that tests can move it).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Renew credentials that have less than this left (a 64 MiB part on a slow link takes minutes).
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The S3 client signing with the current credentials.
struct Lease {
    client: aws_sdk_s3::Client,
    /// When the credentials expire (`None`: the service did not say; never renewed ahead).
    expires: Option<SystemTime>,
    /// Counts renewals, so that parts failing on the same expired credentials renew once.
    generation: u64,
}

pub struct Uploader {
    lease: tokio::sync::Mutex<Lease>,
    endpoint: String,
    bucket: String,
    prefix: String,
    authorize: Authorize,
    clock: Clock,
    renew_before: Duration,
    renewals: AtomicU32,
    runtime: tokio::runtime::Runtime,
    pub part_bytes: u64,
    pub concurrency: usize,
}

/// When credentials expire, from their ISO 8601 `Expiration`.
fn expiry(grant: &UploadGrant) -> Option<SystemTime> {
    let at = DateTime::from_str(grant.credentials.expiration.trim(), DateTimeFormat::DateTimeWithOffset)
        .or_else(|_| DateTime::from_str(grant.credentials.expiration.trim(), DateTimeFormat::DateTime))
        .ok()?;
    SystemTime::try_from(at).ok()
}

fn s3_client(endpoint: &str, grant: &UploadGrant) -> aws_sdk_s3::Client {
    let c = &grant.credentials;
    let credentials = Credentials::new(&c.access_key_id, &c.secret_access_key, Some(c.session_token.clone()), None, "pprl-upload");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Whether an answer says the credentials are no longer valid, so that renewing them helps: an
/// expiry code, or a refusal while our clock says they have expired (some stores answer
/// `AccessDenied` or `InvalidAccessKeyId` for a session that ended).
fn says_expired(code: Option<&str>, expired_by_clock: bool) -> bool {
    match code {
        Some("ExpiredToken" | "TokenRefreshRequired" | "InvalidToken" | "RequestExpired") => true,
        Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => expired_by_clock,
        _ => false,
    }
}

impl Uploader {
    /// A client for the grant's endpoint. `endpoint_override` replaces the host the service
    /// announced (anonlink-client's `UPLOAD_OBJECT_STORE_SERVER`), for stores reached through a
    /// different name from the client's network. `authorize` renews the credentials.
    pub fn new(grant: &UploadGrant, endpoint_override: Option<&str>, part_bytes: u64, concurrency: usize, authorize: Authorize) -> anyhow::Result<Self> {
        let host = endpoint_override.unwrap_or(&grant.upload.endpoint);
        let endpoint = if host.contains("://") {
            host.to_string()
        } else {
            format!("{}://{host}", if grant.upload.secure { "https" } else { "http" })
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the upload runtime")?;
        Ok(Uploader {
            lease: tokio::sync::Mutex::new(Lease { client: s3_client(&endpoint, grant), expires: expiry(grant), generation: 0 }),
            endpoint,
            bucket: grant.upload.bucket.clone(),
            prefix: grant.upload.path.clone(),
            authorize,
            clock: Arc::new(SystemTime::now),
            renew_before: DEFAULT_RENEW_BEFORE,
            renewals: AtomicU32::new(0),
            runtime,
            part_bytes: part_bytes.max(S3_MIN_PART_BYTES),
            concurrency: concurrency.max(1),
        })
    }

    /// Renew credentials that have less than `renew_before` left.
    pub fn renew_before(mut self, renew_before: Duration) -> Self {
        self.renew_before = renew_before;
        self
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How many times the credentials were renewed.
    #[cfg(test)]
    fn renewals(&self) -> u32 {
        self.renewals.load(Ordering::SeqCst)
    }

    /// The client to send the next request with (renewing the credentials first when they are
    /// about to expire), and the generation of its credentials.
    async fn client(&self) -> anyhow::Result<(aws_sdk_s3::Client, u64)> {
        let mut lease = self.lease.lock().await;
        let now = (self.clock)();
        if lease.expires.is_some_and(|at| at <= now + self.renew_before) {
            self.renew(&mut lease).await?;
        }
        Ok((lease.client.clone(), lease.generation))
    }

    /// After an answer saying the credentials of `generation` expired: renew them, unless a
    /// request running beside this one already did.
    async fn renew_expired(&self, generation: u64) -> anyhow::Result<()> {
        let mut lease = self.lease.lock().await;
        if lease.generation == generation {
            self.renew(&mut lease).await?;
        }
        Ok(())
    }

    fn expired_by_clock(&self, generation: u64) -> bool {
        // Judged without the lock: only a hint for ambiguous answers.
        self.lease.try_lock().map_or(true, |lease| lease.generation != generation || lease.expires.is_some_and(|at| at <= (self.clock)()))
    }

    async fn renew(&self, lease: &mut Lease) -> anyhow::Result<()> {
        let authorize = Arc::clone(&self.authorize);
        let grant = tokio::task::spawn_blocking(move || authorize())
            .await
            .context("renewing the upload credentials")?
            .context("renewing the upload credentials (authorize-external-upload)")?;
        if grant.upload.bucket != self.bucket || grant.upload.path != self.prefix {
            bail!(
                "renewed upload credentials are for {}/{}, not {}/{}; the upload cannot continue",
                grant.upload.bucket,
                grant.upload.path,
                self.bucket,
                self.prefix
            );
        }
        *lease = Lease { client: s3_client(&self.endpoint, &grant), expires: expiry(&grant), generation: lease.generation + 1 };
        let count = self.renewals.fetch_add(1, Ordering::SeqCst) + 1;
        let until = if grant.credentials.expiration.is_empty() { "no expiry given" } else { grant.credentials.expiration.as_str() };
        eprintln!("pprl: upload credentials renewed ({count}; valid until {until})");
        Ok(())
    }

    /// Sends a request made by `send` with the current credentials, renewing them and sending
    /// again (once per renewal) when the answer says they expired.
    async fn signed<T, E, F, Fut>(&self, send: F) -> Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>
    where
        E: ProvideErrorMetadata,
        F: Fn(aws_sdk_s3::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>>,
    {
        let mut renewed = false;
        loop {
            let (client, generation) = match self.client().await {
                Ok(found) => found,
                // Renewal failed: send with what we have; the store's answer says what is wrong.
                Err(e) => {
                    eprintln!("pprl: {e:#}");
                    let lease = self.lease.lock().await;
                    (lease.client.clone(), lease.generation)
                }
            };
            match send(client).await {
                Err(SdkError::ServiceError(se))
                    if !renewed && says_expired(se.err().code(), self.expired_by_clock(generation)) =>
                {
                    renewed = true;
                    if let Err(e) = self.renew_expired(generation).await {
                        eprintln!("pprl: {e:#}");
                        return Err(SdkError::ServiceError(se));
                    }
                }
                other => return other,
            }
        }
    }

    /// Uploads `body` to `key` with user metadata (e.g. `hash-count`, `hash-size`).
    pub fn upload(&self, key: &str, body: Body, metadata: &[(&str, String)], progress: &mut ProgressBar, label: &str) -> anyhow::Result<()> {
        let len = body.len();
        let part_bytes = self.part_bytes.max(len.div_ceil(u64::from(S3_MAX_PARTS)));
        if len <= part_bytes {
            // One request: no multipart bookkeeping for small objects.
            let bytes = body.read(0, len as usize)?;
            self.runtime.block_on(async {
                let mut attempt = 0;
                loop {
                    let sent = self
                        .signed(|client| {
                            let mut req = client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(bytes.clone()));
                            for (k, v) in metadata {
                                req = req.metadata(*k, v);
                            }
                            req.send()
                        })
                        .await;
                    match sent {
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
        let started = self
            .signed(|client| {
                let mut start = client.create_multipart_upload().bucket(&self.bucket).key(key);
                for (k, v) in metadata {
                    start = start.metadata(*k, v);
                }
                start.send()
            })
            .await
            .map_err(|e| anyhow::anyhow!("starting the upload of {key}: {}", DisplayErrorContext(e)))?;
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
            let _ = self.signed(|client| client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send()).await;
            return Err(e);
        }
        completed.sort_by_key(|p| p.part_number());
        let completed = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
        self.signed(|client| {
            client.complete_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).multipart_upload(completed.clone()).send()
        })
        .await
            .map_err(|e| anyhow::anyhow!("completing the upload of {key}: {}", DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, bytes: bytes::Bytes) -> anyhow::Result<String> {
        let mut attempt = 0;
        loop {
            let sent = self
                .signed(|client| {
                    client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(bytes.clone()))
                        .send()
                })
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;

    use super::*;
    use crate::client::{TemporaryCredentials, UploadTarget};

    /// One request as the fake store saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        query: String,
        access_key: String,
    }

    /// A fake S3 on 127.0.0.1 for multipart uploads: records who signed each request and
    /// answers `ExpiredToken` to requests signed with a key in `expired`.
    struct FakeStore {
        port: u16,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl FakeStore {
        fn start(expired: &[&str]) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let expired: Vec<String> = expired.iter().map(|s| s.to_string()).collect();
            let log = Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (log, expired) = (Arc::clone(&log), expired.clone());
                    std::thread::spawn(move || serve(stream, &log, &expired));
                }
            });
            FakeStore { port, seen }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn serve(stream: std::net::TcpStream, log: &Mutex<Vec<Seen>>, expired: &[String]) {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = request_line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
            }
            let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
                writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            }
            if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
            } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).unwrap();
                    let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                    let mut chunk = vec![0; size + 2];
                    reader.read_exact(&mut chunk).unwrap();
                    if size == 0 {
                        break;
                    }
                }
            }
            let authorization = header("authorization").unwrap_or_default();
            let access_key = authorization.split("Credential=").nth(1).and_then(|c| c.split('/').next()).unwrap_or_default().to_string();
            let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
            log.lock().unwrap().push(Seen { method: method.clone(), query: query.clone(), access_key: access_key.clone() });
            let (status, extra, body) = if expired.contains(&access_key) {
                ("400 Bad Request", "", "<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>".to_string())
            } else if method == "POST" && query.starts_with("uploads") {
                ("200 OK", "", "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>UP1</UploadId></InitiateMultipartUploadResult>".into())
            } else if method == "POST" {
                ("200 OK", "", "<CompleteMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><ETag>\"all\"</ETag></CompleteMultipartUploadResult>".into())
            } else if method == "DELETE" {
                ("204 No Content", "", String::new())
            } else {
                ("200 OK", "ETag: \"part\"\r\n", String::new())
            };
            let response = format!("HTTP/1.1 {status}\r\n{extra}content-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            writer.write_all(response.as_bytes()).unwrap();
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + seconds)
    }

    fn grant(port: u16, key: &str, expires: SystemTime) -> UploadGrant {
        let expiration = DateTime::from(expires).fmt(DateTimeFormat::DateTime).unwrap();
        UploadGrant {
            credentials: TemporaryCredentials {
                access_key_id: key.into(),
                secret_access_key: format!("secret-of-{key}"),
                session_token: format!("token-of-{key}"),
                expiration,
            },
            upload: UploadTarget { endpoint: format!("127.0.0.1:{port}"), secure: false, bucket: "b".into(), path: "p/0".into() },
        }
    }

    /// An `authorize-external-upload` stand-in: KEY1, KEY2, ... each valid for `ttl` from now.
    fn authorizer(port: u16, ttl: u64) -> (Authorize, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let authorize: Authorize = Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(grant(port, &format!("KEY{n}"), at(ttl)))
        });
        (authorize, calls)
    }

    /// 11 MiB in 5 MiB parts: create, 3 parts, complete.
    fn upload(uploader: &Uploader) -> anyhow::Result<()> {
        let body = Body::Memory(bytes::Bytes::from(vec![7u8; 11 * 1024 * 1024]));
        uploader.upload("p/0/encodings.bin", body, &[("hash-count", "1".into())], &mut ProgressBar::new(false), "test")
    }

    fn multipart_requests(seen: &[Seen]) -> Vec<(String, String)> {
        seen.iter().map(|s| (s.method.clone(), s.access_key.clone())).collect()
    }

    #[test]
    fn credentials_far_from_expiry_are_not_renewed() {
        let store = FakeStore::start(&[]);
        let (authorize, calls) = authorizer(store.port, 3600);
        let uploader = Uploader::new(&grant(store.port, "KEY0", at(3600)), None, S3_MIN_PART_BYTES, 1, authorize)
            .unwrap()
            .with_clock(Arc::new(|| at(0)));
        upload(&uploader).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(store.seen().iter().all(|s| s.access_key == "KEY0"), "{:?}", store.seen());
        assert_eq!(store.seen().len(), 5, "{:?}", store.seen());
    }

    /// Credentials with less than `renew_before` left are renewed before the next request, and
    /// the same multipart upload (one upload id) continues with the new ones.
    #[test]
    fn expiring_credentials_are_renewed_before_each_request_and_the_upload_continues() {
        let store = FakeStore::start(&[]);
        // Valid 10 minutes, renewed when less than 15 minutes are left: before every request.
        let (authorize, calls) = authorizer(store.port, 600);
        let uploader = Uploader::new(&grant(store.port, "KEY0", at(600)), None, S3_MIN_PART_BYTES, 1, authorize)
            .unwrap()
            .renew_before(Duration::from_secs(900))
            .with_clock(Arc::new(|| at(0)));
        upload(&uploader).unwrap();
        let seen = store.seen();
        assert_eq!(
            multipart_requests(&seen),
            [("POST", "KEY1"), ("PUT", "KEY2"), ("PUT", "KEY3"), ("PUT", "KEY4"), ("POST", "KEY5")]
                .map(|(m, k)| (m.to_string(), k.to_string()))
                .to_vec()
        );
        assert!(seen[1..].iter().all(|s| s.query.contains("uploadId=UP1")), "one multipart upload throughout: {seen:?}");
        assert_eq!((calls.load(Ordering::SeqCst), uploader.renewals()), (5, 5));
    }

    /// An answer saying the credentials expired (our clock thought otherwise) renews them once
    /// and sends the request again.
    #[test]
    fn an_expired_token_answer_renews_and_retries() {
        let store = FakeStore::start(&["KEY0"]);
        let (authorize, calls) = authorizer(store.port, 3600);
        let uploader = Uploader::new(&grant(store.port, "KEY0", at(3600)), None, S3_MIN_PART_BYTES, 2, authorize)
            .unwrap()
            .with_clock(Arc::new(|| at(0)));
        upload(&uploader).unwrap();
        let seen = store.seen();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{seen:?}");
        assert_eq!(seen[0].access_key, "KEY0");
        assert!(seen[1..].iter().all(|s| s.access_key == "KEY1"), "{seen:?}");
        assert_eq!(seen.iter().filter(|s| s.method == "PUT").count(), 3);
    }

    #[test]
    fn expiry_answers_are_recognised() {
        assert!(says_expired(Some("ExpiredToken"), false));
        assert!(says_expired(Some("AccessDenied"), true));
        assert!(!says_expired(Some("AccessDenied"), false));
        assert!(!says_expired(Some("NoSuchBucket"), true));
        assert!(!says_expired(None, true));
    }
}
