//! `pprl link`: reads each party's upload file, links them with the engine's [`link`] (the same
//! pack → plan → compare → merge path as the service) and prints the result in the API's shape.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufWriter, Write};

use anyhow::{Context, bail};
use shared::engine::encoding::{self, PartyEncodings, SizeBounds, UploadShape};
use shared::engine::link::{LinkOutput, link_with_progress};
use shared::engine::{output, shard, solver};

use super::wants_help;
use crate::args::{Args, UsageError};
use crate::progress::ProgressBar;

pub const USAGE: &str = "\
Usage: pprl link --threshold T [options] FILE FILE [FILE...]

Links the parties' encodings offline, through the same code path as the service, and prints the
run's result to stdout in the API's result shape. FILE i is party (dataset) i.

Input files (one per party, 2 to 5 parties for groups, exactly 2 otherwise):
  JSON upload bodies: {\"clks\":[...]}, {\"clknblocks\":[[clk, block...],...]} or
  {\"encodings\":[...], \"blocks\":{\"<idx>\":[...]}}; or raw binary files with --binary-size.

Options:
  --threshold T        Dice threshold, 0 < T <= 1 (required); pairs scoring >= T are candidates
  --output KIND        groups (default) | similarity_scores | permutations | mapping
  --blocks             use the files' blocks (a blocking project): every JSON file must carry
                       blocks (clknblocks or encodings+blocks); without it, files with blocks
                       are rejected, as the service rejects them
  --binary-size BYTES  read every FILE as raw concatenated encodings of BYTES bytes each
  --blocks-files F,F   with --binary-size: each party's blocks file ({\"blocks\":{\"<record>\":[ids]}},
                       the external blocks file of an object-store upload), one per FILE in
                       order; implies --blocks
  --shard-size N       target comparisons per shard (default 300000000, as the service)
  --seed N             seed of the permutations (default: random)
  --progress           draw the progress bar even when stderr is not a terminal
  -h, --help           show this help

Output shapes:
  groups             {\"groups\":[[[dataset,record],...],...]}
  similarity_scores  {\"similarity_scores\":[[[d0,r0],[d1,r1],score],...]}
  permutations       {\"permutations\":[[...],[...]],\"rows\":n,\"mask\":[...]}
                     (each party's {\"permutation\",\"rows\"} and the result token's mask together)
  mapping            {\"mapping\":{\"row in party 0\":\"row in party 1\",...}} (pre-1.13 result)
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputKind {
    Groups,
    SimilarityScores,
    Permutations,
    Mapping,
}

impl OutputKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "groups" => Self::Groups,
            "similarity_scores" => Self::SimilarityScores,
            "permutations" => Self::Permutations,
            "mapping" => Self::Mapping,
            _ => return None,
        })
    }
}

struct Options {
    threshold: f64,
    output: OutputKind,
    blocks: bool,
    binary_size: Option<usize>,
    /// Per party, its external blocks file (only with `binary_size`).
    blocks_files: Option<Vec<String>>,
    shard_size: u64,
    seed: Option<u64>,
    progress: bool,
    files: Vec<String>,
}

const MAX_PARTIES: usize = 5;

fn parse(argv: &[String]) -> Result<Options, UsageError> {
    let mut args = Args::parse("link", argv, &["blocks", "progress"])?;
    let usage = |msg: String| UsageError::new("link", msg);

    let threshold: f64 = args
        .parsed("threshold", "a number")?
        .ok_or_else(|| usage("--threshold is required".into()))?;
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(usage(format!("--threshold must be greater than 0 and at most 1, got {threshold}")));
    }
    let output = match args.value("output") {
        None => OutputKind::Groups,
        Some(s) => OutputKind::parse(&s).ok_or_else(|| {
            usage(format!("--output must be groups, similarity_scores, permutations or mapping, got '{s}'"))
        })?,
    };
    let mut blocks = args.flag("blocks")?;
    let progress = args.flag("progress")?;
    let binary_size: Option<usize> = args.parsed("binary-size", "a number of bytes")?;
    if binary_size == Some(0) {
        return Err(usage("--binary-size must be at least 1".into()));
    }
    let blocks_files: Option<Vec<String>> =
        args.value("blocks-files").map(|v| v.split(',').map(str::to_owned).collect());
    if blocks_files.is_some() {
        if binary_size.is_none() {
            return Err(usage("--blocks-files goes with --binary-size (JSON files carry their own blocks)".into()));
        }
        blocks = true;
    }
    let shard_size = args
        .parsed("shard-size", "a positive number of comparisons")?
        .unwrap_or(shard::DEFAULT_TARGET_COMPARISONS);
    if shard_size == 0 {
        return Err(usage("--shard-size must be at least 1".into()));
    }
    let seed = args.parsed("seed", "an unsigned 64-bit integer")?;
    let files = args.finish()?;

    // The service's project rules: 2+ parties, and more than 2 only for groups.
    if files.len() < 2 {
        return Err(usage(format!("linkage needs at least two files (one per party), got {}", files.len())));
    }
    if files.len() > MAX_PARTIES {
        return Err(usage(format!("at most {MAX_PARTIES} parties are supported, got {}", files.len())));
    }
    if let Some(bf) = &blocks_files
        && bf.len() != files.len()
    {
        return Err(usage(format!("--blocks-files names {} files for {} parties", bf.len(), files.len())));
    }
    if binary_size.is_some() && blocks && blocks_files.is_none() {
        return Err(usage("--blocks with --binary-size needs --blocks-files (raw files have no blocks)".into()));
    }
    if files.len() > 2 && output != OutputKind::Groups {
        return Err(usage("only --output groups supports more than two parties".into()));
    }
    Ok(Options { threshold, output, blocks, binary_size, blocks_files, shard_size, seed, progress, files })
}

pub fn run(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{USAGE}");
        return Ok(());
    }
    let opts = parse(argv)?;
    let mut bar = ProgressBar::new(opts.progress);

    let mut parties = Vec::with_capacity(opts.files.len());
    for (i, path) in opts.files.iter().enumerate() {
        bar.message(&format!("reading party {i}: {path}"));
        parties.push(read_party(i, path, &opts).with_context(|| format!("party {i} ({path})"))?);
    }

    let result = link_with_progress(&parties, opts.threshold, opts.shard_size, |p| {
        let label = format!(
            "shard {}/{}  {} / {} comparisons",
            p.shards_done, p.shards_total, p.comparisons_done, p.comparisons_total
        );
        bar.update(p.comparisons_done, p.comparisons_total, &label);
    })
    .context("linkage failed")?;
    bar.message("writing result");

    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    write_result(&mut out, &opts, &parties, result).context("writing the result to stdout")?;
    out.flush().context("writing the result to stdout")?;
    bar.finish();
    Ok(())
}

fn write_result(
    out: &mut impl Write,
    opts: &Options,
    parties: &[PartyEncodings],
    result: LinkOutput,
) -> std::io::Result<()> {
    if opts.output == OutputKind::SimilarityScores {
        output::write_similarity_scores(&mut *out, result.candidates.into_iter())?;
        return writeln!(out);
    }
    let groups = solver::greedy_solve(result.candidates);
    match opts.output {
        OutputKind::Groups => writeln!(out, "{}", output::groups_json(&groups)),
        OutputKind::Mapping => writeln!(out, "{}", output::mapping_json(&groups)),
        OutputKind::Permutations => {
            let sizes = [parties[0].len() as u64, parties[1].len() as u64];
            let seed = opts.seed.unwrap_or_else(random_seed);
            let p = output::permutations(&groups, sizes, seed);
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

fn read_party(party: usize, path: &str, opts: &Options) -> anyhow::Result<PartyEncodings> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_and_validates() {
        let o = parse(&argv("--threshold 0.8 --output mapping a b")).unwrap();
        assert_eq!((o.threshold, o.output, o.files.len()), (0.8, OutputKind::Mapping, 2));
        assert_eq!(o.shard_size, shard::DEFAULT_TARGET_COMPARISONS);
        assert!(parse(&argv("a b")).is_err());
        assert!(parse(&argv("--threshold 0 a b")).is_err());
        assert!(parse(&argv("--threshold 1.5 a b")).is_err());
        assert!(parse(&argv("--threshold 0.8 a")).is_err());
        assert!(parse(&argv("--threshold 0.8 --output permutations a b c")).is_err());
        assert!(parse(&argv("--threshold 0.8 --output nope a b")).is_err());
        assert!(parse(&argv("--threshold 0.8 a b c d e f")).is_err());
        assert!(parse(&argv("--threshold 0.8 a b c d e")).is_ok());
        let o = parse(&argv("--threshold 0.8 --binary-size 128 --blocks-files x,y a b")).unwrap();
        assert!(o.blocks);
        assert!(parse(&argv("--threshold 0.8 --blocks-files x,y a b")).is_err());
        assert!(parse(&argv("--threshold 0.8 --binary-size 128 --blocks-files x a b")).is_err());
        assert!(parse(&argv("--threshold 0.8 --binary-size 128 --blocks a b")).is_err());
    }
}
