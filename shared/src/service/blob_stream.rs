//! Bounded-memory object I/O over a [`BlobStore`]: read an object in ranged chunks, and write
//! one in multipart parts. Ingestion of multi-GB uploads holds one read chunk and one part at a
//! time instead of whole objects.

use std::ops::Range;

use bytes::Bytes;

use super::ports::{BlobError, BlobReader, BlobStore};

/// S3's smallest part (except the last one).
pub const MIN_PART_BYTES: usize = super::aws_limits::S3_MIN_PART_BYTES as usize;
/// S3's largest part number.
pub const MAX_PARTS: u32 = super::aws_limits::S3_MAX_PARTS;

/// Writes one object part by part. Parts are `part_bytes` long (the last one shorter); the
/// multipart upload is only started once a first part is full, so a small object is one plain
/// `put`. Nothing is visible at `key` until [`MultipartWriter::finish`]; a writer dropped
/// without finishing leaves an unfinished upload, which [`MultipartWriter::abort`] (or the
/// bucket's `AbortIncompleteMultipartUpload` lifecycle rule) discards.
pub struct MultipartWriter<'a, B: BlobStore> {
    store: &'a B,
    key: String,
    part_bytes: usize,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<(u32, String)>,
    written: u64,
}

impl<'a, B: BlobStore> MultipartWriter<'a, B> {
    /// A writer whose parts are `part_bytes` long (raised to S3's 5 MiB minimum). With
    /// `expected_len`, the part size grows so that the object fits in 10 000 parts.
    pub fn new(store: &'a B, key: impl Into<String>, part_bytes: usize, expected_len: Option<u64>) -> Self {
        let mut part_bytes = part_bytes.max(MIN_PART_BYTES);
        if let Some(len) = expected_len {
            let needed = len.div_ceil(u64::from(MAX_PARTS - 1)) as usize;
            part_bytes = part_bytes.max(needed);
        }
        MultipartWriter { store, key: key.into(), part_bytes, buffer: Vec::new(), upload_id: None, parts: Vec::new(), written: 0 }
    }

    /// Continues a multipart upload that an earlier invocation started and noted with
    /// [`MultipartWriter::progress`]: `written` bytes are in `parts`, nothing is buffered.
    pub fn resume(store: &'a B, key: impl Into<String>, part_bytes: usize, upload_id: String, parts: Vec<(u32, String)>, written: u64) -> Self {
        MultipartWriter { store, key: key.into(), part_bytes, buffer: Vec::new(), upload_id: Some(upload_id), parts, written }
    }

    /// The multipart upload's id and parts, when every byte written so far is in a part (so
    /// another invocation can continue from here); `None` while bytes are buffered or no part
    /// was uploaded yet.
    pub fn progress(&self) -> Option<(String, Vec<(u32, String)>)> {
        let upload_id = self.upload_id.clone()?;
        self.buffer.is_empty().then(|| (upload_id, self.parts.clone()))
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes; uploads every part that becomes full.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), BlobError> {
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.buffer.capacity() == 0 {
                self.buffer.reserve_exact(self.part_bytes);
            }
            let room = self.part_bytes - self.buffer.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = later;
            if self.buffer.len() == self.part_bytes {
                self.flush_part().await?;
            }
        }
        Ok(())
    }

    async fn flush_part(&mut self) -> Result<(), BlobError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.store.start_multipart(&self.key).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as u32 + 1;
        if number > MAX_PARTS {
            return Err(BlobError::Backend(format!("{}: more than {MAX_PARTS} parts", self.key)));
        }
        // The full buffer goes out as the part; the next part gets a fresh allocation, so at
        // most one part's bytes are held here (plus what the store is still sending).
        let part = Bytes::from(std::mem::take(&mut self.buffer));
        let etag = self.store.upload_part(&self.key, &upload_id, number, part).await?;
        self.parts.push((number, etag));
        Ok(())
    }

    /// Stores what is left and makes the object appear; returns its length.
    pub async fn finish(mut self) -> Result<u64, BlobError> {
        let Some(upload_id) = self.upload_id.clone() else {
            let body = Bytes::from(std::mem::take(&mut self.buffer));
            self.store.put(&self.key, body, &Vec::new()).await?;
            return Ok(self.written);
        };
        if !self.buffer.is_empty() {
            self.flush_part().await?;
        }
        if let Err(e) = self.store.complete_multipart(&self.key, &upload_id, &self.parts).await {
            let _ = self.store.abort_multipart(&self.key, &upload_id).await;
            return Err(e);
        }
        Ok(self.written)
    }

    /// Discards the parts uploaded so far (best effort: the lifecycle rule catches the rest).
    pub async fn abort(self) {
        if let Some(upload_id) = &self.upload_id
            && let Err(e) = self.store.abort_multipart(&self.key, upload_id).await
        {
            tracing::warn!(key = %self.key, error = %e, "could not abort a multipart upload");
        }
    }
}

/// The consecutive ranges that cover `range` in steps of at most `chunk_bytes`, rounded down to a
/// multiple of `align` (so fixed-size records never straddle two chunks).
pub fn chunks(range: Range<u64>, chunk_bytes: u64, align: u64) -> impl Iterator<Item = Range<u64>> {
    let align = align.max(1);
    let step = (chunk_bytes / align).max(1) * align;
    let end = range.end;
    (range.start..end).step_by(step as usize).map(move |start| start..(start + step).min(end))
}

/// `range` of `key`, exactly: a shorter answer (the object changed underneath) is an error.
pub async fn read_exact<B: BlobReader>(store: &B, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
    let bytes = store.get_range(key, range.clone()).await?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(BlobError::Backend(format!("{key}: asked for bytes {range:?}, got {}", bytes.len())));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::memory::MemoryBlobs;

    #[tokio::test]
    async fn small_objects_are_one_put_and_large_ones_multipart() {
        let store = MemoryBlobs::new();
        let mut w = MultipartWriter::new(&store, "small", MIN_PART_BYTES, None);
        w.write(b"hello").await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 5);
        assert_eq!(store.object("small").unwrap().0.as_ref(), b"hello");

        let data: Vec<u8> = (0..(2 * MIN_PART_BYTES + 123)).map(|i| (i % 251) as u8).collect();
        let mut w = MultipartWriter::new(&store, "large", 0, None);
        for chunk in data.chunks(1_000_003) {
            w.write(chunk).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), data.len() as u64);
        assert_eq!(store.object("large").unwrap().0.as_ref(), &data[..]);
        assert_eq!(store.unfinished_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn aborting_leaves_nothing() {
        let store = MemoryBlobs::new();
        let mut w = MultipartWriter::new(&store, "doomed", 0, None);
        w.write(&vec![1u8; MIN_PART_BYTES + 1]).await.unwrap();
        assert_eq!(store.unfinished_multipart_uploads(), 1);
        w.abort().await;
        assert_eq!(store.unfinished_multipart_uploads(), 0);
        assert!(store.object("doomed").is_none());
    }

    #[test]
    fn parts_grow_to_fit_ten_thousand() {
        let store = MemoryBlobs::new();
        let w = MultipartWriter::new(&store, "k", MIN_PART_BYTES, Some(1 << 40));
        assert!(w.part_bytes as u64 * u64::from(MAX_PARTS - 1) >= 1 << 40);
    }

    #[tokio::test]
    async fn chunks_are_aligned_and_cover_the_range() {
        let store = MemoryBlobs::new();
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        store.put("o", Bytes::from(data.clone()), &Vec::new()).await.unwrap();
        let mut seen = Vec::new();
        for range in chunks(10..1000, 64, 10) {
            assert_eq!(range.start % 10, 0);
            assert!(range.end - range.start <= 60);
            seen.extend_from_slice(&read_exact(&store, "o", range).await.unwrap());
        }
        assert_eq!(seen, data[10..]);
        assert!(read_exact(&store, "o", 990..1010).await.is_err());
    }
}
