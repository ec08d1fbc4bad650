//! Where an upload's objects are read from: the service's upload bucket or a store the client
//! named (ExternalData with `endpoint` + `credentials`, allowed by `Settings::pull`). Shared by
//! the one-invocation paths (`external`) and the partitioned one (`blocked_ingestion`), so both
//! check the pull policy and the upload cap the same way.

use bytes::Bytes;

use crate::service::ports::{BlobError, BlobReader, ClientStoreOpener, Metadata};
use crate::service::stored_upload::ObjectRef;

use super::ingestion::Rejected;
use super::{IngestPorts, Pipeline, PipelineError};

/// Where an upload's object is read from: the service's upload bucket or a client's store.
#[derive(Clone)]
pub(super) enum Origin<U, R> {
    Own(U),
    Client(R),
}

impl<U: BlobReader, R: BlobReader> BlobReader for Origin<U, R> {
    async fn get(&self, key: &str) -> Result<(Bytes, Metadata), BlobError> {
        match self {
            Origin::Own(store) => store.get(key).await,
            Origin::Client(store) => store.get(key).await,
        }
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, BlobError> {
        match self {
            Origin::Own(store) => store.get_range(key, range).await,
            Origin::Client(store) => store.get_range(key, range).await,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, Metadata)>, BlobError> {
        match self {
            Origin::Own(store) => store.head(key).await,
            Origin::Client(store) => store.head(key).await,
        }
    }
}

/// An object named by an upload, as found in its store.
pub(super) struct Found<S> {
    pub(super) store: S,
    pub(super) path: String,
    pub(super) len: u64,
    pub(super) metadata: Metadata,
}

pub(super) type Source<U, C> = Origin<U, <C as ClientStoreOpener>::Reader>;

impl<P: IngestPorts> Pipeline<P> {
    /// Opens the store an object is in (checking a client's endpoint against the pull policy
    /// again: it may have changed since the api accepted the upload), heads the object and
    /// checks it against the upload cap.
    pub(super) async fn find(&self, object: &ObjectRef, what: &str) -> Result<Result<Found<Source<P::Uploads, P::ClientStores>>, Rejected>, PipelineError> {
        let path = &object.path;
        let (store, place) = match &object.store {
            None => (Origin::Own(self.uploads.clone()), format!("'{path}'")),
            Some(client) => {
                let endpoint = match self.settings.pull.check_endpoint(&client.endpoint, client.secure) {
                    Ok(endpoint) => endpoint,
                    Err(refused) => return Ok(Err(Rejected(refused.to_string()))),
                };
                let reader = self.client_stores.open(&endpoint, client, &object.bucket)?;
                (Origin::Client(reader), format!("'{path}' in bucket '{}' at {}", object.bucket, endpoint.authority()))
            }
        };
        let Some((len, metadata)) = store.head(path).await? else {
            return Ok(Err(Rejected(format!("The object store has no {what} at {place}; upload it before telling the service"))));
        };
        let max = self.settings.limits.max_upload_bytes;
        if len > max {
            return Ok(Err(Rejected(format!("The {what} at {place} is {len} bytes, over the limit of {max} bytes"))));
        }
        Ok(Ok(Found { store, path: path.clone(), len, metadata }))
    }

}

/// A blocks file's chunks as one `Read`, for the parser on its blocking thread.
pub(super) struct ChannelReader {
    pub(super) receiver: tokio::sync::mpsc::Receiver<Bytes>,
    pub(super) current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

