//! [`BlobStore`] on S3 (the working bucket; locally LocalStack, or SeaweedFS for uploads).

use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;

use crate::service::aws_limits;
use crate::service::ports::{BlobError, BlobReader, BlobStore, Metadata};

#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Blobs {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Blobs { client, bucket: bucket.into() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

/// Maps an SDK error, recognising "no such key" whatever the operation calls it.
fn map_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    key: &str,
    e: SdkError<E, R>,
) -> BlobError {
    let not_found = match &e {
        SdkError::ServiceError(se) => {
            matches!(se.err().code(), Some("NoSuchKey" | "NotFound" | "404"))
                || format!("{:?}", se.raw()).contains("StatusCode(404)")
        }
        _ => false,
    };
    if not_found {
        return BlobError::NotFound(key.to_string());
    }
    let detail = match &e {
        SdkError::ServiceError(se) => format!(
            "{}: {}",
            se.err().code().unwrap_or("error"),
            se.err().message().unwrap_or("no message")
        ),
        other => format!("{}", aws_sdk_s3::error::DisplayErrorContext(other)),
    };
    BlobError::Backend(format!("{key}: {detail}"))
}

pub(super) fn metadata_of(map: Option<&std::collections::HashMap<String, String>>) -> Metadata {
    let mut m: Metadata = map
        .map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
        .unwrap_or_default();
    m.sort();
    m
}

/// The GET of bytes `range` of `key`, for the work bucket and for clients' buckets alike (they
/// differ only in how they read the body and word failures). `None` for an empty range: nothing
/// to ask for, and S3 would refuse the header `bytes=n-(n-1)`.
pub(super) fn ranged_get(client: &aws_sdk_s3::Client, bucket: &str, key: &str, range: &Range<u64>) -> Option<GetObjectFluentBuilder> {
    (!range.is_empty()).then(|| client.get_object().bucket(bucket).key(key).range(format!("bytes={}-{}", range.start, range.end - 1)))
}

/// The whole body of a GET answer (a failure while reading it names the key).
async fn read_body(key: &str, body: ByteStream) -> Result<Bytes, BlobError> {
    Ok(body.collect().await.map_err(|e| BlobError::Backend(format!("{key}: reading body: {e}")))?.into_bytes())
}

impl BlobReader for S3Blobs {
    async fn get(&self, key: &str) -> Result<(Bytes, Metadata), BlobError> {
        let out = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| map_err(key, e))?;
        let metadata = metadata_of(out.metadata());
        let body = read_body(key, out.body).await?;
        Ok((body, metadata))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        let Some(request) = ranged_get(&self.client, &self.bucket, key, &range) else { return Ok(Bytes::new()) };
        let out = request.send().await.map_err(|e| map_err(key, e))?;
        let body = read_body(key, out.body).await?;
        if body.len() as u64 != range.end - range.start {
            return Err(BlobError::Backend(format!(
                "{key}: asked for {} bytes at {}, got {}",
                range.end - range.start,
                range.start,
                body.len()
            )));
        }
        Ok(body)
    }

    async fn get_chunk(&self, key: &str, start: u64, max_len: u64) -> Result<(Bytes, u64), BlobError> {
        let last = start.saturating_add(max_len.max(1)) - 1;
        let out = match self.client.get_object().bucket(&self.bucket).key(key).range(format!("bytes={start}-{last}")).send().await {
            Ok(out) => out,
            // 416: the range starts at or past the end, which for start 0 is an empty object.
            Err(SdkError::ServiceError(se)) if start == 0 && se.err().code() == Some("InvalidRange") => {
                return Ok((Bytes::new(), 0));
            }
            Err(e) => return Err(map_err(key, e)),
        };
        // "bytes a-b/len"; without it the store ignored the range and sent the whole object.
        let total = out.content_range().and_then(|r| r.rsplit_once('/')).and_then(|(_, len)| len.parse::<u64>().ok());
        let body = read_body(key, out.body).await?;
        match total {
            Some(total) => {
                let expected = total.saturating_sub(start).min(max_len);
                if body.len() as u64 != expected {
                    return Err(BlobError::Backend(format!("{key}: asked for {expected} bytes at {start}, got {}", body.len())));
                }
                Ok((body, total))
            }
            None => {
                let total = body.len() as u64;
                let from = start.min(total) as usize;
                Ok((body.slice(from..start.saturating_add(max_len).min(total) as usize), total))
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, Metadata)>, BlobError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some((out.content_length().unwrap_or(0).max(0) as u64, metadata_of(out.metadata())))),
            Err(e) => match map_err(key, e) {
                BlobError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }
}

impl BlobStore for S3Blobs {
    async fn put(&self, key: &str, body: Bytes, metadata: &Metadata) -> Result<(), BlobError> {
        aws_limits::check_s3_put(key, body.len() as u64)?;
        let mut req = self.client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(body));
        for (k, v) in metadata {
            req = req.metadata(k, v);
        }
        req.send().await.map_err(|e| map_err(key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(|e| map_err(key, e))?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let mut deleted = 0u64;
        // Listing again after each batch (rather than paging) stays correct while deleting.
        loop {
            let keys = self.list_page(prefix, 1000).await?;
            if keys.is_empty() {
                return Ok(deleted);
            }
            let objects: Vec<ObjectIdentifier> = keys
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| BlobError::Backend(format!("{prefix}: {e}")))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| map_err(prefix, e))?;
            // DeleteObjects answers 200 even when some keys were not deleted; listing again would
            // find them and loop forever, and ignoring them would leave data behind.
            if let Some(failed) = out.errors().first() {
                return Err(BlobError::Backend(format!(
                    "{prefix}: {} of {} objects not deleted (first: {} {})",
                    out.errors().len(),
                    keys.len(),
                    failed.key().unwrap_or_default(),
                    failed.code().unwrap_or_default()
                )));
            }
            deleted += keys.len() as u64;
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err(prefix, e))?;
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    async fn presign_get(&self, key: &str, ttl_secs: u64) -> Result<String, BlobError> {
        let config = PresigningConfig::expires_in(Duration::from_secs(ttl_secs))
            .map_err(|e| BlobError::Backend(format!("{key}: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(req.uri().to_string())
    }

    async fn start_multipart(&self, key: &str) -> Result<String, BlobError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        out.upload_id.ok_or_else(|| BlobError::Backend(format!("{key}: CreateMultipartUpload returned no upload id")))
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: u32, body: Bytes) -> Result<String, BlobError> {
        aws_limits::check_s3_part(key, number, body.len() as u64)?;
        let number = number as i32; // at most 10,000
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        out.e_tag.ok_or_else(|| BlobError::Backend(format!("{key}: UploadPart {number} returned no ETag")))
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> Result<(), BlobError> {
        // Part sizes were checked as they went up (and S3 refuses a short part that is not the
        // last); the numbers are checked again here.
        for (number, _) in parts {
            aws_limits::check_s3_part(key, *number, 0)?;
        }
        let parts = parts
            .iter()
            .map(|(number, etag)| CompletedPart::builder().part_number(*number as i32).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), BlobError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }
}

impl S3Blobs {
    async fn list_page(&self, prefix: &str, max: i32) -> Result<Vec<String>, BlobError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(max)
            .send()
            .await
            .map_err(|e| map_err(prefix, e))?;
        Ok(out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{unreachable_config, work_s3_client};
    use crate::service::aws_limits::{LimitExceeded, S3_MAX_PUT_BYTES};

    /// A body one byte over S3's single-request limit. Zeroed memory is mapped lazily, so this
    /// costs address space, not 5 GiB of RAM, as long as nobody reads it.
    pub(crate) fn oversized_body() -> Bytes {
        Bytes::from(vec![0u8; S3_MAX_PUT_BYTES as usize + 1])
    }

    #[tokio::test]
    async fn puts_and_parts_s3_would_refuse_are_refused_before_the_call() {
        let s3 = S3Blobs::new(work_s3_client(&unreachable_config()), "bucket");
        let body = oversized_body();
        let r = s3.put("k", body.clone(), &Vec::new()).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3Put { .. }))), "{r:?}");
        let r = s3.upload_part("k", "u", 1, body).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3PartSize { .. }))), "{r:?}");
        let r = s3.upload_part("k", "u", 10_001, Bytes::from_static(b"x")).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3PartNumber { number: 10_001, .. }))), "{r:?}");
        // Within the limits the request does go out (and fails here: nothing listens).
        assert!(matches!(s3.put("k", Bytes::from_static(b"x"), &Vec::new()).await, Err(BlobError::Backend(_))));
    }
}
