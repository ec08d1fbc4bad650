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
    let blocks = match &blocks {
        Some(path) => Some(BlocksFile::checked(path, encodings.count)?),
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
            via_object_store(&client, &uploader, &grant, &project, &token, encodings, blocks.as_ref(), force_progress)?
        }
        None => {
            if !direct {
                eprintln!("pprl: the service does not offer object-store uploads; uploading through the API");
            }
            via_api(&client, &project, &token, encodings, blocks.as_ref())?
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
    blocks: Option<&BlocksFile>,
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
        // The service reads `*.ndjson` as the line form (shared::engine::blocks_file).
        let blocks_key = format!("{}/blocks.ndjson", target.path);
        let len = std::fs::metadata(blocks.ndjson()).with_context(|| format!("reading {}", blocks.ndjson().display()))?.len();
        uploader.upload(&blocks_key, Body::File { path: blocks.ndjson().to_path_buf(), len }, &[], &mut progress, "blocks")?;
        reference["blocks"] = file(&blocks_key);
    }
    progress.finish();
    client.upload_json(project, token, serde_json::to_vec(&reference)?)
}

/// A blocks file checked against the encodings (every record listed once) and in the NDJSON
/// form the service splits: the user's file when it is NDJSON already, else a converted copy
/// in the temporary directory (removed on drop). Read as a stream either way.
struct BlocksFile {
    ndjson: PathBuf,
    converted: bool,
}

impl BlocksFile {
    fn checked(path: &Path, count: u64) -> anyhow::Result<Self> {
        use shared::engine::blocks_file::{self, BlocksFormat, RecordTally};
        let format = BlocksFormat::of_path(&path.to_string_lossy());
        let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?);
        let mut tally = RecordTally::new(count);
        let converted = format == BlocksFormat::Json;
        let ndjson = if converted {
            std::env::temp_dir().join(format!("pprl-blocks-{}-{}.ndjson", std::process::id(), count))
        } else {
            path.to_path_buf()
        };
        let blocks = BlocksFile { ndjson, converted };
        let mut out = if converted {
            let file = std::fs::File::create(&blocks.ndjson).with_context(|| format!("creating {}", blocks.ndjson.display()))?;
            Some(std::io::BufWriter::with_capacity(1 << 20, file))
        } else {
            None
        };
        let mut write_error = None;
        blocks_file::read_blocks(input, format, |record, ids| {
            tally.note(record)?;
            if let Some(out) = out.as_mut()
                && let Err(e) = blocks_file::write_ndjson_record(out, record, ids)
            {
                write_error.get_or_insert(e);
            }
            Ok(())
        })
        .and_then(|_| tally.finish())
        .with_context(|| format!("checking the blocks file {} against the {count} encodings", path.display()))?;
        if let Some(e) = write_error {
            return Err(e).with_context(|| format!("writing {}", blocks.ndjson.display()));
        }
        if let Some(mut out) = out {
            std::io::Write::flush(&mut out).with_context(|| format!("writing {}", blocks.ndjson.display()))?;
        }
        Ok(blocks)
    }

    fn ndjson(&self) -> &Path {
        &self.ndjson
    }

    /// Every record's ids, in record order (for the REST API's inline form, which is small).
    fn per_record(&self, count: u64) -> anyhow::Result<Vec<Vec<String>>> {
        use shared::engine::blocks_file::{self, BlocksFormat};
        let input = std::io::BufReader::new(std::fs::File::open(&self.ndjson).with_context(|| format!("reading {}", self.ndjson.display()))?);
        let mut per_record = vec![Vec::new(); count as usize];
        blocks_file::read_blocks(input, BlocksFormat::Ndjson, |record, ids| {
            per_record[record as usize] = ids.to_vec();
            Ok(())
        })?;
        Ok(per_record)
    }
}

impl Drop for BlocksFile {
    fn drop(&mut self) {
        if self.converted {
            let _ = std::fs::remove_file(&self.ndjson);
        }
    }
}

fn via_api(client: &ServiceClient, project: &str, token: &str, encodings: Encodings, blocks: Option<&BlocksFile>) -> anyhow::Result<String> {
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
    let per_record = blocks.per_record(encodings.count)?;
    use base64::Engine;
    let mut rows = Vec::with_capacity(encodings.count as usize);
    for (record, ids) in data.chunks(encodings.size).zip(per_record) {
        let mut row = vec![Value::String(base64::engine::general_purpose::STANDARD.encode(record))];
        row.extend(ids.into_iter().map(Value::String));
        rows.push(Value::Array(row));
    }
    client.upload_json(project, token, serde_json::to_vec(&json!({"clknblocks": rows}))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_files_are_checked_and_sent_as_ndjson() {
        let dir = std::env::temp_dir().join(format!("pprl-upload-blocks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("b.blocks.json");
        std::fs::write(&json, r#"{"blocks": {"1": ["x", 7], "0": ["y"], "2": []}, "meta": {}}"#).unwrap();
        let blocks = BlocksFile::checked(&json, 3).unwrap();
        let converted = blocks.ndjson().to_path_buf();
        assert_eq!(std::fs::read_to_string(&converted).unwrap(), "{\"1\":[\"x\",\"7\"]}\n{\"0\":[\"y\"]}\n{\"2\":[]}\n");
        assert_eq!(blocks.per_record(3).unwrap(), vec![vec!["y".to_string()], vec!["x".into(), "7".into()], vec![]]);
        drop(blocks);
        assert!(!converted.exists(), "the converted copy is removed");

        // NDJSON is sent as it is, once checked.
        let ndjson = dir.join("b.ndjson");
        std::fs::write(&ndjson, "{\"0\":[\"y\"]}\n{\"1\":[]}\n").unwrap();
        assert_eq!(BlocksFile::checked(&ndjson, 2).unwrap().ndjson(), ndjson.as_path());

        // Malformed halfway, or not one entry per encoding: refused before anything is sent.
        std::fs::write(&json, r#"{"blocks": {"0": ["a"], "1": ["b"] "2": []}}"#).unwrap();
        let err = format!("{:#}", BlocksFile::checked(&json, 3).err().unwrap());
        assert!(err.contains("malformed after record 1"), "{err}");
        std::fs::write(&json, r#"{"blocks": {"0": ["a"], "1": ["b"]}}"#).unwrap();
        let err = format!("{:#}", BlocksFile::checked(&json, 3).err().unwrap());
        assert!(err.contains("2 entries but the encodings have 3"), "{err}");
        let err = format!("{:#}", BlocksFile::checked(&ndjson, 1).err().unwrap());
        assert!(err.contains("refers to encoding 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
