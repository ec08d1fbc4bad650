//! [`ClientStoreOpener`] on S3: read-only access to object stores that clients name in ExternalData,
//! with the client's credentials and nothing of ours.
//!
//! Each open builds an S3 client from scratch (no environment, no credentials of the service):
//! the client's endpoint, path-style, the client's static credentials, the region it named or
//! us-east-1, connect/read timeouts and bounded retries. All of them share one HTTP client whose
//! DNS resolver ([`PolicyResolver`]) refuses every address the pull policy forbids, at connect
//! time, so a name that resolves (or re-resolves, DNS rebinding) to loopback, the metadata
//! service or a private network is never connected to. IP-literal hosts never reach a resolver
//! (hyper connects to them directly); the pipeline checks those against the policy before it
//! opens a store, and the URL given to the SDK is the checked, normalised one. Redirects are not
//! followed (the SDK reports them as errors). Bodies are read with a length bound and a deadline.
//!
//! Every failure becomes [`BlobError::ClientStore`] with a message for the client (unreachable
//! host, forbidden address, TLS failure, access denied, no such bucket or object, too large),
//! built from error codes and statuses, never from the store's free text, and redacted of the
//! credentials.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use bytes::{Bytes, BytesMut};

use crate::service::pull_policy::{ClientCredentials, ClientEndpoint, ClientStoreAccess, PullPolicy};
use crate::service::ports::{BlobError, BlobReader, ClientStoreOpener, Metadata};

use super::s3::{metadata_of, ranged_get};

/// Time to open a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from a request to its response's headers.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per request (the first and two retries of transient failures, with backoff).
pub const MAX_ATTEMPTS: u32 = 3;
/// A body must arrive at this rate at least (plus [`BODY_GRACE`]), so a store that trickles
/// bytes cannot hold fan-out until its timeout.
pub const MIN_BODY_BYTES_PER_SEC: u64 = 1024 * 1024;
pub const BODY_GRACE: Duration = Duration::from_secs(60);

/// Opens clients' stores; one per fan-out cold start.
#[derive(Clone, Debug)]
pub struct S3ClientStoreOpener {
    http: SharedHttpClient,
    max_object_bytes: u64,
}

impl S3ClientStoreOpener {
    /// `max_object_bytes` bounds a whole-object read whose length the store does not announce.
    pub fn new(policy: PullPolicy, max_object_bytes: u64) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .build_with_resolver(PolicyResolver { policy: Arc::new(policy) });
        S3ClientStoreOpener { http, max_object_bytes }
    }
}

impl ClientStoreOpener for S3ClientStoreOpener {
    type Reader = ClientBucket;

    fn open(&self, endpoint: &ClientEndpoint, store: &ClientStoreAccess, bucket: &str) -> Result<ClientBucket, BlobError> {
        let c = &store.credentials;
        let credentials = Credentials::new(&c.access_key_id, &c.secret_access_key, c.session_token.clone(), None, "client-store");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(store.region().to_string()))
            .endpoint_url(endpoint.url())
            .force_path_style(true)
            .credentials_provider(credentials)
            .http_client(self.http.clone())
            .timeout_config(TimeoutConfig::builder().connect_timeout(CONNECT_TIMEOUT).read_timeout(READ_TIMEOUT).build())
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .build();
        Ok(ClientBucket {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_string(),
            authority: endpoint.authority(),
            credentials: Arc::new(c.clone()),
            max_object_bytes: self.max_object_bytes,
        })
    }
}

// ---- the resolver ------------------------------------------------------------------------------

/// Resolves names with the system resolver, then refuses the whole answer if any address is one
/// the policy forbids (a mixed answer is as suspicious as a wholly private one).
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    pub policy: Arc<PullPolicy>,
}

/// A name that does not resolve.
#[derive(Debug, thiserror::Error)]
#[error("'{host}' could not be resolved")]
pub struct NameNotResolved {
    pub host: String,
}

impl PolicyResolver {
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, Box<dyn StdError + Send + Sync>> {
        // Plain errors, boxed by `?` once, so that callers can downcast them.
        let not_found = || NameNotResolved { host: name.to_string() };
        let addresses: Vec<IpAddr> = tokio::net::lookup_host((name, 0)).await.map_err(|_| not_found())?.map(|a| a.ip()).collect();
        if addresses.is_empty() {
            return Err(not_found().into());
        }
        for address in &addresses {
            self.policy.check_address(name, *address)?;
        }
        Ok(addresses)
    }
}

impl ResolveDns for PolicyResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move { self.resolve(name).await.map_err(ResolveDnsError::new) })
    }
}

// ---- the reader --------------------------------------------------------------------------------

/// One bucket of a client's store, read only.
#[derive(Clone, Debug)]
pub struct ClientBucket {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// `host[:port]`, for messages.
    authority: String,
    credentials: Arc<ClientCredentials>,
    max_object_bytes: u64,
}

/// What went wrong with a request, before it becomes a message.
enum Failure {
    NotFound,
    Message(String),
}

/// An error code as a store sent it, reduced to what an S3 code can be.
fn sanitised_code(code: Option<&str>) -> Option<String> {
    let code: String = code?.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').take(64).collect();
    (!code.is_empty()).then_some(code)
}

/// The one message for every failure to get an S3 answer from a client's store.
fn unreachable(at: &str) -> String {
    format!(
        "The object store at {at} could not be reached, or did not answer as an S3 store (check the endpoint, \
         its port and 'secure')."
    )
}

impl ClientBucket {
    fn fail(&self, message: String) -> BlobError {
        BlobError::ClientStore(self.credentials.redact(&message))
    }

    fn classify<E>(&self, key: &str, error: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let at = &self.authority;
        let bucket = &self.bucket;
        match error {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = sanitised_code(se.err().code());
                match (code.as_deref(), status) {
                    (Some("NoSuchBucket"), _) => Failure::Message(format!("The object store at {at} has no bucket '{bucket}'.")),
                    (Some("NoSuchKey" | "NotFound"), _) | (None, 404) => Failure::NotFound,
                    (
                        Some(
                            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"
                            | "TokenRefreshRequired" | "AllAccessDisabled" | "AccountProblem",
                        ),
                        _,
                    )
                    | (_, 401 | 403) => Failure::Message(format!(
                        "The object store at {at} denied access to '{key}' in bucket '{bucket}' with the credentials given ({}).",
                        code.as_deref().unwrap_or("HTTP 403")
                    )),
                    (Some("PermanentRedirect" | "TemporaryRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"), _)
                    | (_, 301 | 302 | 307 | 308) => Failure::Message(format!(
                        "The object store at {at} sends requests for bucket '{bucket}' elsewhere; give the bucket's own \
                         endpoint and 'region'."
                    )),
                    (Some(code), status) => Failure::Message(format!(
                        "The object store at {at} answered HTTP {status} ({code}) for '{key}' in bucket '{bucket}'."
                    )),
                    // Not an S3 answer: whatever listens there is none of the caller's business.
                    (None, _) => Failure::Message(unreachable(at)),
                }
            }
            // Whether a host exists, resolves to a forbidden address, refuses, resets, times out
            // or fails TLS all read the same, so a caller cannot probe hosts and ports through
            // us; the log (not the caller) gets the cause.
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                tracing::info!(store = %at, cause = %self.credentials.redact(&DisplayErrorContext(error).to_string()), "client store unreachable");
                Failure::Message(unreachable(at))
            }
            SdkError::ConstructionFailure(_) => {
                Failure::Message(format!("A request for '{key}' in bucket '{bucket}' could not be made (invalid bucket or key?)."))
            }
            _ => Failure::Message(format!("The object store at {at} could not be used for '{key}' in bucket '{bucket}'.")),
        }
    }

    fn error<E>(&self, key: &str, error: SdkError<E, HttpResponse>) -> BlobError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        match self.classify(key, &error) {
            Failure::NotFound => {
                self.fail(format!("The object store at {} has no object '{key}' in bucket '{}'.", self.authority, self.bucket))
            }
            Failure::Message(message) => self.fail(message),
        }
    }

    /// Reads a body of at most `limit` bytes before a deadline that grows with `limit`.
    async fn read_body(&self, key: &str, mut body: ByteStream, limit: u64, expected: Option<u64>) -> Result<Bytes, BlobError> {
        let deadline = BODY_GRACE + Duration::from_secs(limit.min(self.max_object_bytes) / MIN_BODY_BYTES_PER_SEC);
        let read = async {
            let mut buffer = BytesMut::with_capacity(expected.unwrap_or(0).min(64 << 20) as usize);
            while let Some(chunk) = body.try_next().await.map_err(|_| {
                self.fail(format!("The connection to the object store at {} broke while reading '{key}'.", self.authority))
            })? {
                if buffer.len() as u64 + chunk.len() as u64 > limit {
                    return Err(self.fail(format!(
                        "The object store at {} sent more than the {limit} bytes expected for '{key}'.",
                        self.authority
                    )));
                }
                buffer.extend_from_slice(&chunk);
            }
            Ok(buffer.freeze())
        };
        tokio::time::timeout(deadline, read).await.map_err(|_| {
            self.fail(format!(
                "The object store at {} sent '{key}' too slowly (under {} KiB/s).",
                self.authority,
                MIN_BODY_BYTES_PER_SEC / 1024
            ))
        })?
    }
}

impl BlobReader for ClientBucket {
    async fn get(&self, key: &str) -> Result<(Bytes, Metadata), BlobError> {
        let out = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| self.error(key, e))?;
        let metadata = metadata_of(out.metadata());
        let announced = out.content_length().and_then(|n| u64::try_from(n).ok());
        if announced.is_some_and(|n| n > self.max_object_bytes) {
            return Err(self.fail(format!(
                "'{key}' at {} is larger than the limit of {} bytes.",
                self.authority, self.max_object_bytes
            )));
        }
        let body = self.read_body(key, out.body, announced.unwrap_or(self.max_object_bytes), announced).await?;
        Ok((body, metadata))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        let Some(request) = ranged_get(&self.client, &self.bucket, key, &range) else { return Ok(Bytes::new()) };
        let out = request.send().await.map_err(|e| self.error(key, e))?;
        let wanted = range.end - range.start;
        let body = self.read_body(key, out.body, wanted, Some(wanted)).await?;
        if body.len() as u64 != wanted {
            return Err(self.fail(format!(
                "The object store at {} sent {} bytes of '{key}' where {wanted} were asked for (did the object change?).",
                self.authority,
                body.len()
            )));
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, Metadata)>, BlobError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some((out.content_length().unwrap_or(0).max(0) as u64, metadata_of(out.metadata())))),
            Err(e) => match self.classify(key, &e) {
                Failure::NotFound => Ok(None),
                Failure::Message(message) => Err(self.fail(message)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::pull_policy::PullRefused;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn policy(allow_loopback: bool) -> PullPolicy {
        PullPolicy { enabled: true, allow_http: true, allow_loopback, allowed_networks: Vec::new(), allowed_ports: Vec::new() }
    }

    fn store() -> ClientStoreAccess {
        ClientStoreAccess {
            endpoint: "unused".into(),
            secure: Some(false),
            region: None,
            credentials: ClientCredentials {
                access_key_id: "AKIDCLIENTKEY0001".into(),
                secret_access_key: "client-secret-value-0001".into(),
                session_token: None,
            },
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_forbidden_answers() {
        let strict = PolicyResolver { policy: Arc::new(policy(false)) };
        for name in ["localhost", "127.0.0.1", "169.254.169.254", "10.1.2.3", "::1", "::ffff:127.0.0.1"] {
            let error = strict.resolve(name).await.expect_err(name);
            let refused = error.downcast_ref::<PullRefused>().unwrap_or_else(|| panic!("{name}: {error}"));
            assert!(matches!(refused, PullRefused::ForbiddenAddress { .. }), "{name}: {refused:?}");
        }
        let local = PolicyResolver { policy: Arc::new(policy(true)) };
        assert!(local.resolve("localhost").await.unwrap().iter().all(IpAddr::is_loopback));
        assert!(local.resolve("169.254.169.254").await.is_err(), "allowing loopback allows nothing else");
        let missing = local.resolve("no-such-host.invalid").await.unwrap_err();
        assert!(missing.downcast_ref::<NameNotResolved>().is_some(), "{missing}");
    }

    /// A one-connection-at-a-time HTTP server answering every request with `response`; returns
    /// its port and a counter of the connections it accepted.
    async fn fake_store(response: impl Into<Vec<u8>>) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let response: Vec<u8> = response.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            }
        });
        (port, accepted)
    }

    fn endpoint(host: &str, port: u16) -> ClientEndpoint {
        ClientEndpoint::parse(&format!("http://{host}:{port}"), None).unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let (port, accepted) = fake_store(&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]).await;
        // `localhost` stands for any name that resolves to a forbidden address (DNS rebinding).
        let stores = S3ClientStoreOpener::new(policy(false), 1 << 20);
        let bucket = stores.open(&endpoint("localhost", port), &store(), "b").unwrap();
        let error = bucket.head("k").await.unwrap_err().to_string();
        assert!(error.contains("could not be reached"), "the same text as any unreachable store: {error}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "no connection may reach the forbidden address");
    }

    #[tokio::test]
    async fn answers_become_messages_without_credentials() {
        // The store's message quotes the key: it must not come through.
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>key AKIDCLIENTKEY0001 denied</Message><RequestId>1</RequestId></Error>"#;
        let (port, _) = fake_store(format!("HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{xml}", xml.len())).await;
        let stores = S3ClientStoreOpener::new(policy(true), 1 << 20);
        let bucket = stores.open(&endpoint("localhost", port), &store(), "b").unwrap();
        let error = bucket.get_range("k", 0..8).await.unwrap_err().to_string();
        assert!(error.contains("denied access") && error.contains("AccessDenied"), "{error}");
        assert!(!error.contains("AKIDCLIENTKEY0001") && !error.contains("client-secret-value"), "{error}");

        let (port, _) = fake_store(&b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"[..]).await;
        let bucket = stores.open(&endpoint("127.0.0.1", port), &store(), "b").unwrap();
        assert!(bucket.head("k").await.unwrap().is_none());

        // Closed port: unreachable, after the bounded retries.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let bucket = stores.open(&endpoint("127.0.0.1", closed), &store(), "b").unwrap();
        let error = bucket.head("k").await.unwrap_err().to_string();
        assert!(error.contains("could not be reached"), "{error}");
    }

    #[tokio::test]
    async fn bodies_longer_than_asked_for_are_refused() {
        let (port, _) = fake_store(&b"HTTP/1.1 206 Partial Content\r\ncontent-length: 16\r\n\r\n0123456789abcdef"[..]).await;
        let stores = S3ClientStoreOpener::new(policy(true), 1 << 20);
        let bucket = stores.open(&endpoint("127.0.0.1", port), &store(), "b").unwrap();
        let error = bucket.get_range("k", 0..8).await.unwrap_err().to_string();
        assert!(error.contains("more than the 8 bytes"), "{error}");
        let (port, _) = fake_store(&b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n0123456789abcdef"[..]).await;
        let small = S3ClientStoreOpener::new(policy(true), 8);
        let bucket = small.open(&endpoint("127.0.0.1", port), &store(), "b").unwrap();
        let error = bucket.get("k").await.unwrap_err().to_string();
        assert!(error.contains("larger than the limit of 8 bytes"), "{error}");
    }
}
