//! Uploads: POST `/clks` (the three JSON forms, inline or in the object store), POST
//! `/binaryclks`, and GET `authorize-external-upload`.
//!
//! An upload is answered 201 with a receipt as soon as it is stored in the working bucket under
//! `keys::upload` (as the reference does: sizes and base64 are checked later, by ingestion in
//! fan-out, and failures surface as the project's `error`). What is checked here is what the
//! reference checks at request time: the token, the upload's shape against the project's
//! blocking setting, binary headers and length, and object-store paths.

use std::fmt;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::{Access, Allowed, authorize};
use super::error::{ApiError, ApiResult};
use super::extract::{AuthToken, ProjectId, discard_body, media_type, read_body};
use super::Shared;
use crate::service::pull_policy::{self, ClientCredentials, ClientStoreAccess, PullRefused};
use crate::service::config::Settings;
use crate::service::keys;
use crate::service::model::{Party, Project, UploadStart};
use crate::service::ports::{BlobStore, CredentialIssuer, Metadata, MetaError, Ports, ProjectStore, UploadStore};
use crate::service::tokens::{self, TokenHash};

const TOKEN_ALREADY_USED: &str = "This token has already been used to upload clks.";
const PATH_NOT_ALLOWED: &str = "Provided object store path is not allowed";

// ---- what the working bucket receives ---------------------------------------------------------

pub use crate::service::stored_upload::{ExternalUpload, HASH_COUNT, HASH_SIZE, ObjectRef};
use crate::service::stored_upload::UploadForm;

// ---- reading a JSON upload without decoding it ------------------------------------------------

/// The `file` part of the reference's ExternalData. Without an `endpoint`, or with the
/// service's own, the object is in the upload bucket and `credentials` are ignored, as the
/// reference does. Another `endpoint` is a store of the client's, pulled from with the
/// client's `credentials` when `Settings::pull` allows it (see [`locate`]). `region` is ours
/// (the reference has none): the region to sign for, default us-east-1.
#[derive(Debug, Deserialize)]
struct ExternalFile {
    bucket: String,
    path: String,
    #[serde(default)]
    endpoint: Option<String>,
    /// A bool, as the schema says (the reference validates its body against its schema too).
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    region: Option<String>,
}

/// ExternalData: `file`, and the client's `credentials` for its own store (kept as JSON until
/// checked, so that no parse error can quote them; `Debug` leaves them out).
struct ExternalData {
    file: ExternalFile,
    credentials: Option<Value>,
}

impl fmt::Debug for ExternalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalData").field("file", &self.file).field("credentials", &self.credentials.as_ref().map(|_| "..")).finish()
    }
}

/// `host[:port]` of an endpoint, lower-case, without scheme or trailing slash.
fn normalise_endpoint(endpoint: &str) -> String {
    let without_scheme = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    without_scheme.trim_end_matches('/').to_ascii_lowercase()
}

/// Where an ExternalData object is: in the upload bucket, under the party's own prefix (no
/// endpoint, or the one `authorize-external-upload` announced), or in the store of the client's
/// that `endpoint` names, when pulls are allowed and the endpoint passes the pull policy's static
/// checks (syntax, https, no forbidden IP literal; addresses of names are checked by fan-out at
/// connect time).
fn locate(settings: &Settings, project_id: &str, party: u32, data: &ExternalData) -> Result<ObjectRef, ApiError> {
    let (upload, file) = (&settings.upload, &data.file);
    if let Some(region) = &file.region {
        pull_policy::check_region(region).map_err(|refused| ApiError::BadRequest(refused.to_string()))?;
    }
    let elsewhere = file
        .endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty() && normalise_endpoint(e) != normalise_endpoint(&upload.public_endpoint));
    let Some(endpoint) = elsewhere else {
        if !upload.enabled {
            return Err(uploads_disabled());
        }
        return check_object_allowed(&upload.bucket, project_id, party, file);
    };
    if !settings.pull.enabled {
        if !upload.enabled {
            return Err(uploads_disabled());
        }
        // User info in a URL is a password: not repeated back.
        let shown = if endpoint.contains('@') { "an endpoint with user info" } else { endpoint };
        return Err(ApiError::BadRequest(format!(
            "Pulling encodings from another object store ('{shown}') is not supported; upload them to this service's \
             store ('{}') with the credentials from authorize-external-upload, and name that object (the endpoint may \
             be left out).",
            upload.public_endpoint
        )));
    }
    let bad = |refused: PullRefused| ApiError::BadRequest(refused.to_string());
    let secure = file.secure;
    settings.pull.check_endpoint(endpoint, secure).map_err(bad)?;
    let Some(credentials) = &data.credentials else {
        return Err(ApiError::BadRequest(
            "Pulling from another object store needs 'credentials' ({\"AccessKeyId\", \"SecretAccessKey\", \
             \"SessionToken\"?}) that can read the object."
                .into(),
        ));
    };
    let credentials = ClientCredentials::from_json(credentials).map_err(bad)?;
    if file.bucket.is_empty() || file.bucket.len() > 255 || file.bucket.contains('/') {
        return Err(ApiError::BadRequest("The bucket name must be 1..=255 characters without '/'.".into()));
    }
    if file.path.is_empty() || file.path.len() > 1024 {
        return Err(ApiError::BadRequest("The object path must be 1..=1024 bytes.".into()));
    }
    check_path_segments(&file.path)?;
    Ok(ObjectRef {
        bucket: file.bucket.clone(),
        path: file.path.clone(),
        store: Some(ClientStoreAccess { endpoint: endpoint.trim().to_string(), secure, region: file.region.clone(), credentials }),
    })
}

fn uploads_disabled() -> ApiError {
    ApiError::BadRequest(
        "Uploads through the object store are disabled on this service; send the encodings in the request body.".into(),
    )
}

// Every upload form is checked against the schema's shapes here, element by element, without
// keeping or decoding anything: an upload the schema refuses is a 400 now (as the reference's
// request validation answers), not a 201 followed by an ingestion error. Base64 and sizes are
// still ingestion's to check.

/// What a JSON value is, as far as the upload shapes care; containers are skipped unread.
#[derive(Debug, PartialEq)]
enum Kind {
    Text,
    Integer,
    Other,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Kind, E> {
                Ok(Kind::Text)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Integer)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Integer)
            }
            // Integers beyond 64 bits arrive as floats; 2.5 is not an integer.
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Kind, E> {
                Ok(if v.is_finite() && v.fract() == 0.0 { Kind::Integer } else { Kind::Other })
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
        }
        d.deserialize_any(KindVisitor)
    }
}

/// Counts a JSON array's elements, all of which must be strings (base64 encodings).
fn count_strings<'de, A: SeqAccess<'de>>(mut seq: A, field: &str) -> Result<usize, A::Error> {
    let mut n = 0;
    while let Some(kind) = seq.next_element::<Kind>()? {
        if kind != Kind::Text {
            return Err(serde::de::Error::custom(format!("'{field}' holds base64 strings; element {n} is not a string")));
        }
        n += 1;
    }
    Ok(n)
}

/// Whether a JSON value is an array of block ids (strings or integers): read without failing,
/// so that an object's other members can still decide what the object is.
struct BlockIdsShape(bool);

impl<'de> Deserialize<'de> for BlockIdsShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = BlockIdsShape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of block ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BlockIdsShape, A::Error> {
                let mut ok = true;
                while let Some(kind) = seq.next_element::<Kind>()? {
                    ok &= kind != Kind::Other;
                }
                Ok(BlockIdsShape(ok))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BlockIdsShape, A::Error> {
                Kind::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|_| BlockIdsShape(false))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<BlockIdsShape, E> {
                Ok(BlockIdsShape(false))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<BlockIdsShape, E> {
                Ok(BlockIdsShape(false))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<BlockIdsShape, E> {
                Ok(BlockIdsShape(false))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<BlockIdsShape, E> {
                Ok(BlockIdsShape(false))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<BlockIdsShape, E> {
                Ok(BlockIdsShape(false))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<BlockIdsShape, E> {
                Ok(BlockIdsShape(false))
            }
        }
        d.deserialize_any(ShapeVisitor)
    }
}

/// `encodings` or `blocks`: inline (counted, not decoded) or ExternalData.
#[derive(Debug)]
enum Source {
    Inline(usize),
    External(ExternalData),
}

/// Which member a [`Source`] is: `encodings` is an array of strings or ExternalData; `blocks` is
/// an object (record index → block ids) or ExternalData.
#[derive(Clone, Copy)]
enum SourceField {
    Encodings,
    Blocks,
}

struct SourceVisitor(SourceField);

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = Source;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            SourceField::Encodings => f.write_str("'encodings': an array of base64 strings, or {\"file\": {\"bucket\", \"path\"}}"),
            SourceField::Blocks => f.write_str("'blocks': an object of record index → block ids, or {\"file\": {\"bucket\", \"path\"}}"),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Source, A::Error> {
        match self.0 {
            SourceField::Encodings => count_strings(seq, "encodings").map(Source::Inline),
            SourceField::Blocks => Err(serde::de::Error::invalid_type(serde::de::Unexpected::Seq, &self)),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Source, A::Error> {
        let (mut file, mut credentials, mut entries, mut all_block_ids) = (None, None, 0, true);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "file" => file = Some(map.next_value::<ExternalFile>()?),
                // ExternalData's credentials: used only to pull from the client's store.
                "credentials" => credentials = Some(map.next_value::<Value>()?),
                _ => {
                    all_block_ids &= map.next_value::<BlockIdsShape>()?.0;
                    entries += 1;
                }
            }
        }
        match (file, self.0) {
            (Some(file), _) => {
                if let Some(credentials) = &credentials {
                    check_credentials_shape(credentials).map_err(serde::de::Error::custom)?;
                }
                Ok(Source::External(ExternalData { file, credentials }))
            }
            (None, SourceField::Encodings) => Err(serde::de::Error::custom(
                "'encodings' is an array of base64 strings, or {\"file\": {\"bucket\", \"path\"}} naming an object",
            )),
            (None, SourceField::Blocks) if credentials.is_some() || !all_block_ids => Err(serde::de::Error::custom(
                "each member of 'blocks' maps a record index to an array of block ids (strings or integers)",
            )),
            (None, SourceField::Blocks) => Ok(Source::Inline(entries)),
        }
    }
}

/// ExternalData's `credentials` as the schema describes them, whichever store the object is in
/// (for the service's own store they are then ignored). Messages never quote the values.
fn check_credentials_shape(credentials: &Value) -> Result<(), String> {
    let Value::Object(map) = credentials else {
        return Err("'credentials': expected an object {\"AccessKeyId\", \"SecretAccessKey\", \"SessionToken\"?}".into());
    };
    for (name, min, max) in [("AccessKeyId", 1, 128), ("SecretAccessKey", 1, 256), ("SessionToken", 0, 8192)] {
        match map.get(name) {
            None => {}
            Some(Value::String(s)) if (min..=max).contains(&s.chars().count()) => {}
            Some(_) => return Err(format!("credentials.{name} must be a string of {min}..={max} characters")),
        }
    }
    Ok(())
}

fn encodings_source<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Source>, D::Error> {
    d.deserialize_any(SourceVisitor(SourceField::Encodings)).map(Some)
}

fn blocks_source<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Source>, D::Error> {
    d.deserialize_any(SourceVisitor(SourceField::Blocks)).map(Some)
}

/// A member that is present must have its shape: `null` is not "absent" (the schema has no
/// nullable members).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `clks`: how many base64 strings.
#[derive(Debug)]
struct Clks(usize);

impl<'de> Deserialize<'de> for Clks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ClksVisitor;
        impl<'de> Visitor<'de> for ClksVisitor {
            type Value = Clks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("'clks': an array of base64 strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Clks, A::Error> {
                count_strings(seq, "clks").map(Clks)
            }
        }
        d.deserialize_seq(ClksVisitor)
    }
}

/// `clknblocks`: how many entries, each an array of the encoding then its block ids.
#[derive(Debug)]
struct ClknBlocks(usize);

impl<'de> Deserialize<'de> for ClknBlocks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ClknBlocksVisitor;
        impl<'de> Visitor<'de> for ClknBlocksVisitor {
            type Value = ClknBlocks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("'clknblocks': an array of [encoding, block id, ...] arrays")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ClknBlocks, A::Error> {
                let mut n = 0;
                while let Some(BlockIdsShape(ok)) = seq.next_element()? {
                    if !ok {
                        return Err(serde::de::Error::custom(format!(
                            "'clknblocks' entry {n} is not an array of the encoding then its block ids (strings or integers)"
                        )));
                    }
                    n += 1;
                }
                Ok(ClknBlocks(n))
            }
        }
        d.deserialize_seq(ClknBlocksVisitor)
    }
}

/// The shape of a JSON upload: which forms it uses and how many records each holds.
#[derive(Debug, Deserialize)]
struct UploadProbe {
    #[serde(default, deserialize_with = "present")]
    clks: Option<Clks>,
    #[serde(default, deserialize_with = "present")]
    clknblocks: Option<ClknBlocks>,
    #[serde(default, deserialize_with = "encodings_source")]
    encodings: Option<Source>,
    #[serde(default, deserialize_with = "blocks_source")]
    blocks: Option<Source>,
}

fn probe(body: &[u8]) -> Result<UploadProbe, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() { "is not valid JSON" } else { "does not match any upload format" };
        ApiError::BadRequest(format!("The upload {what}: {e}"))
    })
}

/// The reference's `abort_if_inconsistent_upload` (403s, sic).
fn check_consistency(uses_blocking: bool, p: &UploadProbe) -> Result<(), ApiError> {
    let has_blocks = p.clknblocks.is_some() || p.blocks.is_some();
    if uses_blocking && !has_blocks {
        return Err(ApiError::Forbidden(r#"Expecting blocking information. Either in "blocks" or "clksnblocks""#.into()));
    }
    if !uses_blocking && has_blocks {
        return Err(ApiError::Forbidden(
            "Blocking has been disabled for this project, but received blocking information".into(),
        ));
    }
    if p.clks.is_none() && p.clknblocks.is_none() && p.encodings.is_none() {
        return Err(ApiError::Forbidden("Missing encoding information".into()));
    }
    Ok(())
}

/// Where a party may put its encodings: `{project}/{party}/...` in the upload bucket.
pub fn upload_prefix(project_id: &str, party: u32) -> String {
    format!("{project_id}/{party}")
}

fn check_object_allowed(state_bucket: &str, project_id: &str, party: u32, file: &ExternalFile) -> Result<ObjectRef, ApiError> {
    // The trailing slash keeps party 1 out of party 10's objects.
    let prefix = format!("{}/", upload_prefix(project_id, party));
    if file.bucket != state_bucket || !file.path.starts_with(&prefix) || file.path.len() == prefix.len() {
        return Err(ApiError::Forbidden(PATH_NOT_ALLOWED.into()));
    }
    check_path_segments(&file.path)?;
    Ok(ObjectRef { bucket: file.bucket.clone(), path: file.path.clone(), store: None })
}

/// Refuses object paths with empty, `.` or `..` segments (`a//b`, `a/./b`, `a/../b`): S3 takes
/// them literally, but proxies, SDKs and other stores normalise them, so the object read could
/// differ from the one the prefix check allowed.
fn check_path_segments(path: &str) -> Result<(), ApiError> {
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(ApiError::BadRequest(
            "The object path must not have empty, '.' or '..' segments (no '//', '/./' or '/../').".into(),
        ));
    }
    Ok(())
}

/// A stored upload: what to put under `keys::upload` and with which metadata.
struct Stored {
    body: Bytes,
    metadata: Metadata,
}


/// Validates a JSON upload and decides what to store.
fn plan_json_upload<P: Ports>(
    state: &super::ApiState<P>,
    project: &Project,
    party: u32,
    body: Bytes,
) -> Result<Stored, ApiError> {
    let p = probe(&body)?;
    let forms = [p.clks.is_some(), p.clknblocks.is_some(), p.encodings.is_some()];
    if forms.iter().filter(|&&used| used).count() > 1 {
        return Err(ApiError::BadRequest("An upload holds exactly one of 'clks', 'clknblocks' or 'encodings'.".into()));
    }
    check_consistency(project.uses_blocking, &p)?;

    if let Some(Source::External(data)) = &p.encodings {
        let encodings = locate(&state.settings, &project.project_id, party, data)?;
        let blocks = match &p.blocks {
            None => None,
            Some(Source::External(data)) => Some(locate(&state.settings, &project.project_id, party, data)?),
            // The reference fails these with a 500 (NotImplementedError); say so up front.
            Some(Source::Inline(_)) => {
                return Err(ApiError::BadRequest(
                    "Encodings in the object store need their blocks in the object store too; upload the blocks file \
                     and send {\"blocks\": {\"file\": {\"bucket\", \"path\"}}}."
                        .into(),
                ));
            }
        };
        let reference = ExternalUpload { encodings, blocks };
        let body = serde_json::to_vec(&reference).map_err(|e| ApiError::Internal(format!("serialising upload reference: {e}")))?;
        return Ok(Stored { body: Bytes::from(body), metadata: UploadForm::External.metadata() });
    }

    if let Some(Source::External(_)) = &p.blocks {
        return Err(ApiError::BadRequest(
            "Blocks in the object store need the encodings in the object store too; send both inline or both as files.".into(),
        ));
    }
    let records = match (&p.encodings, &p.blocks, &p.clknblocks, &p.clks) {
        // Inline encodings become records by iterating the blocks map when there is one.
        (Some(Source::Inline(_)), Some(Source::Inline(blocks)), _, _) => *blocks,
        (Some(Source::Inline(n)), None, _, _) => *n,
        (None, Some(_), _, _) => {
            return Err(ApiError::BadRequest("'blocks' is accepted only together with 'encodings'.".into()));
        }
        (None, None, Some(ClknBlocks(n)), _) => *n,
        (None, None, None, Some(Clks(n))) => *n,
        _ => 0,
    };
    if records == 0 {
        return Err(ApiError::BadRequest("Missing CLKs information".into()));
    }
    Ok(Stored { body, metadata: UploadForm::Json.metadata() })
}

/// The party whose update token this is, if its token has not been used yet.
fn uploading_party(project: &Project, parties: &[Party], token: &str) -> Result<u32, ApiError> {
    let Access::Update(index) = authorize(project, parties, token, Allowed::UpdateOnly)? else {
        return Err(ApiError::InvalidAccess);
    };
    match parties.iter().find(|p| p.index == index) {
        Some(party) if party.upload.may_begin() => Ok(index),
        _ => Err(ApiError::Forbidden(TOKEN_ALREADY_USED.into())),
    }
}

/// Records the upload as pending, stores it, and answers 201 with a fresh receipt token; undoes
/// the pending state if storing fails, so the token can be used again.
async fn accept_upload<P: Ports>(
    state: &super::ApiState<P>,
    project_id: &str,
    party: u32,
    stored: Stored,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    P::Meta: UploadStore,
    P::Work: BlobStore,
{
    let receipt_token = tokens::generate();
    let upload = UploadStart { upload_id: tokens::generate(), receipt_token_hash: TokenHash::of(&receipt_token) };
    match state.meta.begin_upload(project_id, party, &upload).await {
        Ok(()) => {}
        Err(MetaError::Conflict(_)) => return Err(ApiError::Forbidden(TOKEN_ALREADY_USED.into())),
        Err(e) => return Err(e.into()),
    }
    let key = keys::upload(project_id, party, &upload.upload_id);
    let size = stored.body.len();
    if let Err(e) = state.work.put(&key, stored.body, &stored.metadata).await {
        if let Err(undo) = state.meta.abort_upload(project_id, party, &upload.upload_id, None).await {
            tracing::error!(project_id, party, error = %undo, "could not reset the party after a failed upload; it stays pending");
        }
        return Err(e.into());
    }
    tracing::info!(project_id, party, upload_id = %upload.upload_id, bytes = size, "upload stored");
    Ok((StatusCode::CREATED, Json(json!({"message": "Updated", "receipt_token": receipt_token}))))
}

/// POST `/projects/{project_id}/clks` (`application/json`).
pub async fn clks<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    P::Meta: ProjectStore + UploadStore,
    P::Work: BlobStore,
{
    let (project, parties) = state.project(&project_id).await?;
    let party = uploading_party(&project, &parties, &token)?;
    if media_type(&headers).as_deref() != Some("application/json") {
        return Err(ApiError::BadRequest("Content Type not supported".into()));
    }
    let body = read_body(&headers, body, state.settings.limits.max_request_bytes).await?;
    let stored = plan_json_upload(&state, &project, party, body)?;
    accept_upload(&state, &project_id, party, stored).await
}

/// A positive integer header as Python's `int()` reads it, within `min..=max`.
fn header_int(headers: &HeaderMap, name: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    let invalid = || ApiError::BadRequest(format!("Invalid value for {name} header"));
    let value = headers.get(name).ok_or_else(invalid)?.to_str().map_err(|_| invalid())?;
    let n: i128 = value.trim().trim_start_matches('+').parse().map_err(|_| invalid())?;
    u64::try_from(n).ok().filter(|n| (min..=max).contains(n)).ok_or_else(invalid)
}

/// POST `/projects/{project_id}/binaryclks` (`application/octet-stream`, `Hash-Count`,
/// `Hash-Size`): exactly count × size bytes, one encoding after another.
pub async fn binary_clks<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    P::Meta: ProjectStore + UploadStore,
    P::Work: BlobStore,
{
    let (project, parties) = state.project(&project_id).await?;
    let party = uploading_party(&project, &parties, &token)?;
    if media_type(&headers).as_deref() != Some("application/octet-stream") {
        return Err(ApiError::BadRequest("Content Type not supported".into()));
    }
    if !headers.contains_key("hash-count") || !headers.contains_key("hash-size") {
        return Err(ApiError::BadRequest("Binary upload requires 'Hash-Count' and 'Hash-Size' headers".into()));
    }
    let limits = &state.settings.limits;
    let size = header_int(&headers, "Hash-Size", limits.min_encoding_size as u64, limits.max_encoding_size as u64)?;
    let count = header_int(&headers, "Hash-Count", 1, u64::MAX)?;
    if project.schema_encoding_size().is_some_and(|expected| expected as u64 != size) {
        return Err(ApiError::BadRequest("Upload 'Hash-Size' doesn't match project settings".into()));
    }
    let wrong_size = || ApiError::BadRequest("Uploaded data did not match the expected size. Check request headers are correct".into());
    // The length must agree with the headers before anything else is said about it (the
    // reference answers 400 for a disagreement, whatever the sizes).
    let expected = count.checked_mul(size);
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some() && declared != expected {
        discard_body(body).await;
        return Err(wrong_size());
    }
    let expected = expected.ok_or_else(wrong_size)?;
    // A declared total beyond the request limit can never arrive inline: say where to put it.
    if expected > limits.max_request_bytes as u64 {
        discard_body(body).await;
        return Err(ApiError::PayloadTooLarge { limit: limits.max_request_bytes });
    }
    let body = match read_body(&headers, body, limits.max_request_bytes).await {
        // More bytes than the headers announce (which fit the limit): they disagree.
        Err(ApiError::PayloadTooLarge { .. }) => return Err(wrong_size()),
        other => other?,
    };
    if body.len() as u64 != expected {
        return Err(wrong_size());
    }
    let metadata = UploadForm::Binary { count, size: size as usize }.metadata();
    accept_upload(&state, &project_id, party, Stored { body, metadata }).await
}

/// GET `/projects/{project_id}/authorize-external-upload` → 201 credentials that allow only
/// `PutObject` under the party's own prefix of the upload bucket.
pub async fn authorize_external_upload<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    P::Meta: ProjectStore,
    P::Credentials: CredentialIssuer,
{
    let upload = &state.settings.upload;
    if !upload.enabled {
        return Err(ApiError::FeatureDisabled);
    }
    let (project, parties) = state.project(&project_id).await?;
    let party = uploading_party(&project, &parties, &token)?;
    let path = upload_prefix(&project_id, party);
    let credentials = state.credentials.issue(&upload.bucket, &format!("{path}/"), upload.credentials_ttl_secs).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "credentials": credentials,
            "upload": {
                "endpoint": upload.public_endpoint,
                "secure": upload.public_secure,
                "bucket": upload.bucket,
                "path": path,
            }
        })),
    ))
}
