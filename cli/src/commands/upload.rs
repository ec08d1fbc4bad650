//! `pprl upload`: one party's encodings (and blocks) to a project, through the object store
//! when the service allows it, else through the REST API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::write_output;
use crate::client::{ServiceClient, UploadGrant};
use crate::object_store::{Authorize, Body, Uploader};
use crate::progress::ProgressBar;

/// One party's upload: where to, with which token, and how.
pub struct UploadOptions {
    pub client: ServiceClient,
    /// A second client: renewing credentials asks the service again, on its own connection.
    pub renewer: ServiceClient,
    pub project: String,
    /// The party's update token.
    pub token: String,
    pub blocks: Option<PathBuf>,
    pub encoding_size: Option<usize>,
    pub part_mib: u64,
    pub concurrency: usize,
    pub endpoint: Option<String>,
    pub renew_before: Option<u64>,
    pub direct: bool,
    pub progress: bool,
    /// Where the receipt goes (`None`: stdout).
    pub output: Option<PathBuf>,
    pub file: PathBuf,
}

/// The encodings, ready to go: binary, with their count and size.
struct Encodings {
    body: Body,
    count: u64,
    size: usize,
}

fn load_encodings(path: &Path, encoding_size: Option<usize>) -> anyhow::Result<Encodings> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if let Some(size) = encoding_size {
        if size == 0 || len % size as u64 != 0 {
            bail!("{} is {len} bytes, not a whole number of {size}-byte encodings", path.display());
        }
        return Ok(Encodings { body: Body::File { path: path.to_path_buf(), len }, count: len / size as u64, size });
    }
    // JSON: decoded here (as the service would) and sent as binary, which the service ingests
    // streaming; a JSON file must fit in memory anyway to be made.
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let decoded = shared::engine::encoding::decode_json_upload(&text, shared::engine::encoding::SizeBounds { min: 1, max: usize::MAX })
        .with_context(|| format!("{} is not a clks JSON file (give --encoding-size for a binary file)", path.display()))?;
    if decoded.blocks.is_some() {
        bail!("{} carries blocks inline; give the encodings as {{\"clks\": [...]}} and the blocks with --blocks", path.display());
    }
    Ok(Encodings { count: decoded.len() as u64, size: decoded.encoding_size, body: Body::Memory(bytes::Bytes::from(decoded.data)) })
}

pub fn run(o: UploadOptions) -> anyhow::Result<()> {
    let UploadOptions { client, renewer, project, token, blocks, encoding_size, part_mib, concurrency, endpoint, renew_before, direct, progress: force_progress, output, file } = o;
    let encodings = load_encodings(&file, encoding_size)?;
    let blocks_json = match &blocks {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let grant = if direct { None } else { client.authorize_external_upload(&project, &token)? };
    let receipt = match grant {
        Some(grant) => {
            let (project_id, update_token) = (project.clone(), token.clone());
            let authorize: Authorize = Arc::new(move || {
                renewer.authorize_external_upload(&project_id, &update_token)?.context("the service no longer offers object-store uploads")
            });
            let mut uploader = Uploader::new(&grant, endpoint.as_deref(), part_mib * 1024 * 1024, concurrency, authorize)?;
            if let Some(secs) = renew_before {
                uploader = uploader.renew_before(Duration::from_secs(secs));
            }
            via_object_store(&client, &uploader, &grant, &project, &token, encodings, blocks_json, force_progress)?
        }
        None => {
            if !direct {
                eprintln!("pprl: the service does not offer object-store uploads; uploading through the API");
            }
            via_api(&client, &project, &token, encodings, blocks_json)?
        }
    };
    write_output(output.as_deref(), &json!({"receipt_token": receipt}).to_string())
}

#[allow(clippy::too_many_arguments)]
fn via_object_store(
    client: &ServiceClient,
    uploader: &Uploader,
    grant: &UploadGrant,
    project: &str,
    token: &str,
    encodings: Encodings,
    blocks: Option<Vec<u8>>,
    force_progress: bool,
) -> anyhow::Result<String> {
    let target = &grant.upload;
    let encodings_key = format!("{}/encodings.bin", target.path);
    let metadata = [("hash-count", encodings.count.to_string()), ("hash-size", encodings.size.to_string())];
    let mut progress = ProgressBar::bytes(force_progress);
    let label = format!("{} encodings of {} bytes", encodings.count, encodings.size);
    uploader.upload(&encodings_key, encodings.body, &metadata, &mut progress, &label)?;
    let file = |path: &str| json!({"file": {"bucket": target.bucket, "path": path}});
    let mut reference = json!({"encodings": file(&encodings_key)});
    if let Some(blocks) = blocks {
        let blocks_key = format!("{}/blocks.json", target.path);
        uploader.upload(&blocks_key, Body::Memory(bytes::Bytes::from(blocks)), &[], &mut progress, "blocks")?;
        reference["blocks"] = file(&blocks_key);
    }
    progress.finish();
    client.upload_json(project, token, serde_json::to_vec(&reference)?)
}

fn via_api(client: &ServiceClient, project: &str, token: &str, encodings: Encodings, blocks: Option<Vec<u8>>) -> anyhow::Result<String> {
    let data = match encodings.body {
        Body::Memory(b) => b.to_vec(),
        Body::File { path, .. } => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    };
    let Some(blocks) = blocks else {
        return client.upload_binary(project, token, encodings.count, encodings.size, data);
    };
    // Blocks go as clknblocks ([[base64, block ids...], ...]): record i is array position i, as
    // in the blocks file. (Inline {"encodings", "blocks"} would number records by the blocks
    // map's iteration order, which a JSON object re-serialised here need not keep.)
    let blocks: Value = serde_json::from_slice(&blocks).context("the blocks file is not JSON")?;
    let blocks = blocks.get("blocks").and_then(Value::as_object).context("the blocks file has no \"blocks\" object (blocklib output)")?;
    if blocks.len() as u64 != encodings.count {
        bail!("the blocks file lists {} records but there are {} encodings", blocks.len(), encodings.count);
    }
    use base64::Engine;
    let mut rows = Vec::with_capacity(encodings.count as usize);
    for (i, record) in data.chunks(encodings.size).enumerate() {
        let ids = blocks.get(&i.to_string()).and_then(Value::as_array).with_context(|| format!("the blocks file has no blocks for record {i}"))?;
        let mut row = vec![Value::String(base64::engine::general_purpose::STANDARD.encode(record))];
        row.extend(ids.iter().cloned());
        rows.push(Value::Array(row));
    }
    client.upload_json(project, token, serde_json::to_vec(&json!({"clknblocks": rows}))?)
}
