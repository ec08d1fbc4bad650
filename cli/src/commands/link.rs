//! `pprl link`: reads each party's upload file, links them with the engine's [`link`] (the same
//! pack → plan → compare → merge path as the service), solves with the engine's
//! [`solve`] step (the service's solve too) and prints the result in the API's shape.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use shared::engine::encoding::{self, PartyEncodings, SizeBounds, UploadShape};
use shared::engine::link::{LinkOutput, link_with_progress};
use shared::engine::candidates::Candidate;
use shared::engine::solve::{self, ComponentGroups, ComponentLimits, Limited, TwoPartyMatches};
use shared::engine::solver::{self, NotTwoParty};
use shared::engine::{output, shard};

use crate::progress::ProgressBar;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Groups,
    SimilarityScores,
    Permutations,
    Mapping,
}

impl OutputKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "groups" => Self::Groups,
            "similarity_scores" => Self::SimilarityScores,
            "permutations" => Self::Permutations,
            "mapping" => Self::Mapping,
            _ => return None,
        })
    }
}

/// What `pprl link` does: which files, which result, where it goes.
pub struct LinkOptions {
    pub threshold: f64,
    pub output: OutputKind,
    /// The result's file; `None`: stdout.
    pub output_file: Option<PathBuf>,
    pub blocks: bool,
    pub binary_size: Option<usize>,
    /// Per party, its external blocks file (only with `binary_size`).
    pub blocks_files: Option<Vec<String>>,
    pub shard_size: u64,
    pub seed: Option<u64>,
    pub progress: bool,
    pub files: Vec<String>,
}

const MAX_PARTIES: usize = 5;

impl LinkOptions {
    /// The service's project rules and the options' own consistency; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.threshold;
        if !(t > 0.0 && t <= 1.0) {
            return Err(format!("--threshold must be greater than 0 and at most 1, got {t}"));
        }
        if self.binary_size == Some(0) {
            return Err("--binary-size must be at least 1".into());
        }
        if self.shard_size == 0 {
            return Err("--shard-size must be at least 1".into());
        }
        if self.blocks_files.is_some() && self.binary_size.is_none() {
            return Err("--blocks-files goes with --binary-size (JSON files carry their own blocks)".into());
        }
        // The service's project rules: 2+ parties, and more than 2 only for groups.
        let files = self.files.len();
        if files < 2 {
            return Err(format!("linkage needs at least two files (one per party), got {files}"));
        }
        if files > MAX_PARTIES {
            return Err(format!("at most {MAX_PARTIES} parties are supported, got {files}"));
        }
        if let Some(bf) = &self.blocks_files
            && bf.len() != files
        {
            return Err(format!("--blocks-files names {} files for {files} parties", bf.len()));
        }
        if self.binary_size.is_some() && self.blocks && self.blocks_files.is_none() {
            return Err("--blocks with --binary-size needs --blocks-files (raw files have no blocks)".into());
        }
        if files > 2 && self.output != OutputKind::Groups {
            return Err("only --type groups supports more than two parties".into());
        }
        Ok(())
    }
}

pub fn run(opts: LinkOptions) -> anyhow::Result<()> {
    let mut bar = ProgressBar::new(opts.progress);
    let (parties, result) = read_and_link(&opts, &mut bar)?;
    bar.message("writing result");
    match &opts.output_file {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = BufWriter::new(file);
            write_result(&mut out, &opts, &parties, result).with_context(|| format!("writing {}", path.display()))?;
            out.flush().with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            write_result(&mut out, &opts, &parties, result).context("writing the result to stdout")?;
            out.flush().context("writing the result to stdout")?;
        }
    }
    bar.finish();
    Ok(())
}

/// The candidate pairs (similarity scores) of two parties' files at `threshold`, as
/// `pprl link --type similarity_scores` computes them (for `pprl histogram --encodings`).
pub fn similarity_scores(files: &[String], threshold: f64, progress: bool) -> anyhow::Result<Vec<Candidate>> {
    let opts = LinkOptions {
        threshold,
        output: OutputKind::SimilarityScores,
        output_file: None,
        blocks: false,
        binary_size: None,
        blocks_files: None,
        shard_size: shard::DEFAULT_TARGET_COMPARISONS,
        seed: None,
        progress,
        files: files.to_vec(),
    };
    opts.validate().map_err(|msg| crate::args::UsageError::new("histogram", msg))?;
    let mut bar = ProgressBar::new(progress);
    let (_, result) = read_and_link(&opts, &mut bar)?;
    bar.finish();
    Ok(result.candidates)
}

/// Reads every party's file and links them, drawing progress on `bar`.
fn read_and_link(opts: &LinkOptions, bar: &mut ProgressBar) -> anyhow::Result<(Vec<PartyEncodings>, LinkOutput)> {
    let mut parties = Vec::with_capacity(opts.files.len());
    for (i, path) in opts.files.iter().enumerate() {
        bar.message(&format!("reading party {i}: {path}"));
        parties.push(read_party(i, path, opts).with_context(|| format!("party {i} ({path})"))?);
    }
    let result = link_with_progress(&parties, opts.threshold, opts.shard_size, |p| {
        let label = format!("shard {}/{} comparisons", p.shards_done, p.shards_total);
        bar.update(p.comparisons_done, p.comparisons_total, &label);
    })
    .context("linkage failed")?;
    Ok((parties, result))
}

fn write_result(
    out: &mut impl Write,
    opts: &LinkOptions,
    parties: &[PartyEncodings],
    result: LinkOutput,
) -> std::io::Result<()> {
    if opts.output == OutputKind::SimilarityScores {
        output::write_similarity_scores(&mut *out, result.candidates.into_iter())?;
        return writeln!(out);
    }
    // No limits here: a solve that cannot hold the candidates says so instead.
    let over_limit = || std::io::Error::other("more candidate pairs than one solve can hold");
    if parties.len() > 2 {
        // Only groups take more than two parties (LinkOptions::validate).
        let expected = result.candidates.len() as u64;
        let merged = result.candidates.into_iter().map(Ok::<_, Infallible>);
        return match solve::group_by_component(merged, ComponentLimits::NONE, expected, false) {
            Ok(Limited::Solved(ComponentGroups { groups, .. })) => writeln!(out, "{}", output::groups_json(&groups)),
            Ok(Limited::OverLimit) => Err(over_limit()),
            Err(never) => match never {},
        };
    }
    let merged = result.candidates.into_iter().map(Ok::<_, NotTwoParty>);
    let pairs = match solve::match_two_parties(merged, u64::MAX, false) {
        Ok(Limited::Solved(TwoPartyMatches { greedy, .. })) => greedy.into_pairs(),
        Ok(Limited::OverLimit) => return Err(over_limit()),
        Err(e) => return Err(std::io::Error::other(format!("linkage produced {e}"))),
    };
    match opts.output {
        OutputKind::Groups => writeln!(out, "{}", output::groups_json(&solver::pairs_to_groups(&pairs))),
        OutputKind::Mapping => writeln!(out, "{}", output::mapping_json(&solver::pairs_to_groups(&pairs))),
        OutputKind::Permutations => {
            let sizes = [parties[0].len() as u64, parties[1].len() as u64];
            let seed = opts.seed.unwrap_or_else(random_seed);
            let p = output::permutations_of_pairs(pairs, sizes, seed);
            writeln!(out, "{}", permutations_json(&p))
        }
        OutputKind::SimilarityScores => Ok(()),
    }
}

/// `{"permutations":[[...],[...]],"rows":n,"mask":[...]}`: both parties' permutation results
/// and the result token's mask in one object (the service hands them out per token, as
/// `output::permutation_json` / `output::mask_json`).
fn permutations_json(p: &output::Permutations) -> String {
    fn list<T: ToString>(xs: &[T]) -> String {
        let items: Vec<String> = xs.iter().map(T::to_string).collect();
        format!("[{}]", items.join(","))
    }
    let perms: Vec<String> = p.permutations.iter().map(|perm| list(perm)).collect();
    format!("{{\"permutations\":[{}],\"rows\":{},\"mask\":{}}}", perms.join(","), p.rows, list(&p.mask))
}

/// A seed from the OS-seeded hasher keys std already draws: unpredictable without a rand crate.
fn random_seed() -> u64 {
    RandomState::new().hash_one(std::process::id())
}

fn read_party(party: usize, path: &str, opts: &LinkOptions) -> anyhow::Result<PartyEncodings> {
    let body = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let bounds = SizeBounds::default();
    if let Some(size) = opts.binary_size {
        if body.len() % size != 0 {
            bail!(
                "{} bytes is not a whole number of {size}-byte encodings (check --binary-size)",
                body.len()
            );
        }
        let count = (body.len() / size) as u64;
        let mut decoded = encoding::decode_binary(&body, count, size, bounds)?;
        if let Some(blocks_path) = opts.blocks_files.as_ref().and_then(|f| f.get(party)) {
            let blocks = std::fs::read(blocks_path).with_context(|| format!("cannot read {blocks_path}"))?;
            decoded.blocks = Some(
                encoding::decode_blocks_file(&blocks, decoded.len())
                    .with_context(|| format!("blocks file {blocks_path}"))?,
            );
        }
        return Ok(decoded);
    }

    let has_blocks = match encoding::upload_shape(&body)? {
        UploadShape::Clks => false,
        UploadShape::ClknBlocks => true,
        UploadShape::Encodings { external_encodings, blocks } => {
            if external_encodings || blocks == Some(true) {
                bail!("the file refers to object-store data; pprl link needs the encodings inline");
            }
            blocks.is_some()
        }
        UploadShape::None => {
            bail!("not an upload body: expected a JSON object with \"clks\", \"clknblocks\" or \"encodings\" (use --binary-size for raw files)")
        }
    };
    // The service's consistency rule between the project's blocking setting and the upload.
    if has_blocks && !opts.blocks {
        bail!("the file has blocks; pass --blocks to link with blocking");
    }
    if !has_blocks && opts.blocks {
        bail!("--blocks is set but the file has no blocks (use clknblocks or encodings with blocks)");
    }
    Ok(encoding::decode_json_upload(&body, bounds)?)
}
