//! An upload as the api stores it under `incoming/uploads/` and fan-out reads it: one type for
//! both sides, so that the object's form, its metadata keys and the reference to data in an
//! object store are written and read by the same code.
//!
//! - [`UploadForm`] is the form of the stored body, carried in the object's metadata (`kind`,
//!   and for binary bodies `hash-count` / `hash-size`, the names the reference's clients also
//!   put on objects they upload).
//! - [`ExternalUpload`] is the body of an `External` upload: the objects (encodings, maybe a
//!   blocks file) in the upload bucket or in a client's store.

use serde::{Deserialize, Serialize};

use crate::service::pull_policy::ClientStoreAccess;
use crate::service::ports::Metadata;

/// Metadata naming the record count of binary encodings (on stored uploads and on objects
/// clients upload).
pub const HASH_COUNT: &str = "hash-count";
/// Metadata naming the encoding size in bytes, likewise.
pub const HASH_SIZE: &str = "hash-size";
const KIND: &str = "kind";

/// The form of a stored upload's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadForm {
    /// The JSON body as received (`clks`, `clknblocks` or inline `encodings`).
    Json,
    /// Raw `count` × `size` bytes.
    Binary { count: u64, size: usize },
    /// An [`ExternalUpload`] document: the data is in an object store.
    External,
}

impl UploadForm {
    /// The stored object's metadata.
    pub fn metadata(&self) -> Metadata {
        let kind = |k: &str| (KIND.to_string(), k.to_string());
        match self {
            UploadForm::Json => vec![kind("json")],
            UploadForm::External => vec![kind("external")],
            UploadForm::Binary { count, size } => {
                vec![kind("binary"), (HASH_COUNT.into(), count.to_string()), (HASH_SIZE.into(), size.to_string())]
            }
        }
    }

    /// The form a stored object's metadata names; `Err` says, for the project's users, why it
    /// cannot be read.
    pub fn of(metadata: &Metadata) -> Result<Self, String> {
        match meta_value(metadata, KIND) {
            Some("json") => Ok(UploadForm::Json),
            Some("external") => Ok(UploadForm::External),
            Some("binary") => match declared_counts(metadata) {
                Some((count, size)) => Ok(UploadForm::Binary { count, size }),
                None => Err("Binary upload requires 'Hash-Count' and 'Hash-Size' headers".into()),
            },
            other => Err(format!("Upload stored in an unknown form ({other:?}); please upload again.")),
        }
    }
}

/// `hash-count` and `hash-size` of an object (stored upload or client's object), when both
/// are there and numbers.
pub fn declared_counts(metadata: &Metadata) -> Option<(u64, usize)> {
    let count = meta_value(metadata, HASH_COUNT).and_then(|v| v.trim().parse::<u64>().ok())?;
    let size = meta_value(metadata, HASH_SIZE).and_then(|v| v.trim().parse::<usize>().ok())?;
    Some((count, size))
}

fn meta_value<'a>(metadata: &'a Metadata, name: &str) -> Option<&'a str> {
    metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// An object in the upload bucket, or, with `store`, in a store the client named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub bucket: String,
    pub path: String,
    /// The client's store and credentials, when the object is not in the service's upload
    /// bucket (pulls allowed by `Settings::pull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<ClientStoreAccess>,
}

/// The body of an [`UploadForm::External`] upload. Serialized as `{"encodings":
/// {"bucket","path","store"?}, "blocks"?: {"bucket","path","store"?}}`; the work bucket
/// encrypts it at rest and fan-out deletes it once the upload is ingested or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalUpload {
    pub encodings: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<ObjectRef>,
}

impl ExternalUpload {
    /// The objects it names: the encodings, then the blocks file if any.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectRef> {
        std::iter::once(&self.encodings).chain(self.blocks.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_back_from_their_metadata() {
        for form in [UploadForm::Json, UploadForm::External, UploadForm::Binary { count: 3, size: 8 }] {
            assert_eq!(UploadForm::of(&form.metadata()), Ok(form));
        }
        let binary_without_counts = vec![(KIND.to_string(), "binary".to_string())];
        assert!(UploadForm::of(&binary_without_counts).unwrap_err().contains("Hash-Count"));
        assert!(UploadForm::of(&Vec::new()).unwrap_err().contains("unknown form"));
    }
}
