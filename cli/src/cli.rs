//! The command line, declared with `clap` (derive): every command, flag, alias and environment
//! fallback lives here, and each command's arguments turn into the plain options struct its
//! module in [`crate::commands`] runs on. Command logic never sees clap, so a command is wired by
//! adding a variant here and one line in [`Command::run`].
//!
//! anonlink-client users keep their spellings: `create` for `run`, `--apikey` for `--token`,
//! `-o/--output` for where a command writes, `-w/--watch`, `--blocked`, `--to-entityservice`,
//! and the `--retry-*` options with the same meaning and defaults. `status` without `--run` is the
//! service's status (as in anonlink-client); with `--run` it is that run's status (as pprl's
//! scripts use it).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::args::UsageError;
use crate::client::{RetryPolicy, ServiceClient};
use crate::commands::{describe, histogram, link, runs, upload};

#[derive(Debug, Parser)]
#[command(
    name = "pprl",
    version,
    about = "pprl: privacy-preserving record linkage (the Anonlink Entity Service, serverless)",
    long_about = "pprl: privacy-preserving record linkage (the Anonlink Entity Service, serverless).\n\n\
        Links encodings offline exactly as the service would (link), helps choose a threshold \
        (histogram, describe), and drives a running service with the calls anonlink-client makes \
        (create-project, upload, create/run, status, results, delete, delete-project).\n\n\
        Tokens: give them with PPRL_TOKEN or --token-file rather than --token, which shell \
        history and `ps` can show to others.",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Link parties' encodings offline, exactly as the service would
    Link(LinkArgs),
    /// Draw the similarity-score histogram and suggest a threshold (SVG and terminal)
    Histogram(HistogramArgs),
    /// Draw the popcount histogram of a party's encodings
    Describe(DescribeArgs),
    /// Link the FEBRL4 sample through a running service and report accuracy
    Demo(DemoArgs),
    /// Generate two parties' CLKs with known matches (and blocks) for benchmarks
    ///
    /// Its options are its own: `pprl synth --help` lists them.
    #[command(disable_help_flag = true)]
    Synth {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Estimate a run's shards, time and AWS cost before posting it (JSON)
    ///
    /// Its options are its own: `pprl plan --help` lists them.
    #[command(disable_help_flag = true)]
    Plan {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Create a linkage project on the service; prints its tokens
    CreateProject(CreateProjectArgs),
    /// Upload a party's encodings (object store in parts, else the API)
    Upload(UploadArgs),
    /// Start a linkage run on a project
    #[command(visible_alias = "create")]
    Run(RunArgs),
    /// The service's status; with --run, that run's status (--watch follows it to the end)
    Status(StatusArgs),
    /// Fetch a run's result (--watch waits for it first)
    Results(ResultsArgs),
    /// Delete a run
    Delete(DeleteArgs),
    /// Delete a project, with its uploads, runs and results
    DeleteProject(DeleteProjectArgs),
    /// Print a shell completion script (e.g. `pprl completions bash > ~/.local/share/bash-completion/completions/pprl`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Link(a) => link::run(a.into_options()?),
            Command::Histogram(a) => histogram::run(a.into_options()?),
            Command::Describe(a) => describe::run(a.into_options()),
            Command::Demo(a) => crate::commands::demo::run(a.server.client()?, &a.server.server, a.data, a.threshold),
            Command::Synth { args } => crate::commands::synth::run(&args),
            Command::Plan { args } => crate::commands::plan::run(&args),
            Command::CreateProject(a) => runs::create_project(&a.server.client()?, a.into_options()?),
            Command::Upload(a) => upload::run(a.into_options()?),
            Command::Run(a) => runs::run(&a.server.client()?, a.into_options()?),
            Command::Status(a) => runs::status(&a.server.client()?, a.into_options()?),
            Command::Results(a) => runs::results(&a.server.client()?, a.into_options()?),
            Command::Delete(a) => runs::delete_run(&a.server.client()?, &a.project, &a.run, &a.token.require("delete")?),
            Command::DeleteProject(a) => runs::delete_project(&a.server.client()?, &a.project, &a.token.require("delete-project")?),
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "pprl", &mut std::io::stdout());
                Ok(())
            }
        }
    }
}

// ------------------------------------------------------------------ shared options

/// Where the service is and how to retry it (anonlink-client's `--retry-*`, in milliseconds).
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// The service's address
    #[arg(long, env = "API_URL", default_value = "http://127.0.0.1:8851", value_name = "URL")]
    pub server: String,
    /// First wait before retrying a 429/502/503/504 or a connection error; it doubles each retry
    #[arg(long, value_name = "MS", default_value_t = RetryPolicy::default().multiplier_ms)]
    pub retry_multiplier: u64,
    /// Longest wait between two retries
    #[arg(long, value_name = "MS", default_value_t = RetryPolicy::default().exponential_max_ms)]
    pub retry_exponential_max: u64,
    /// Retry only within this time from the first attempt
    #[arg(long, value_name = "MS", default_value_t = RetryPolicy::default().max_time_ms)]
    pub retry_max_time: u64,
}

impl ServiceArgs {
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            multiplier_ms: self.retry_multiplier,
            exponential_max_ms: self.retry_exponential_max,
            max_time_ms: self.retry_max_time,
        }
    }

    pub fn client(&self) -> anyhow::Result<ServiceClient> {
        ServiceClient::with_retry(&self.server, self.retry())
    }
}

/// The environment variable a token is read from when neither option gives one.
pub const TOKEN_ENV: &str = "PPRL_TOKEN";

/// A token: `--token` (alias `--apikey`), else `--token-file`, else `$PPRL_TOKEN`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The token (visible in shell history and `ps`: prefer PPRL_TOKEN or --token-file)
    #[arg(long, visible_alias = "apikey", value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read the token from this file (surrounding whitespace ignored)
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token, if one was given one way or another.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty", path.display());
            }
            return Ok(Some(token.to_owned()));
        }
        Ok(std::env::var(TOKEN_ENV).ok().filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_owned()))
    }

    /// The token, or a usage error naming the three ways to give it.
    pub fn require(&self, command: &str) -> anyhow::Result<String> {
        self.resolve()?.ok_or_else(|| {
            UsageError::new(command, format!("a token is required: --token (or --apikey), --token-file FILE or ${TOKEN_ENV}")).into()
        })
    }
}

// ------------------------------------------------------------------ offline commands

#[derive(Debug, Args)]
#[command(after_help = "Input files (one per party, 2 to 5 parties for groups, exactly 2 otherwise):\n  \
    JSON upload bodies: {\"clks\":[...]}, {\"clknblocks\":[[clk, block...],...]} or\n  \
    {\"encodings\":[...], \"blocks\":{\"<idx>\":[...]}}; or raw binary files with --binary-size.\n\n\
    Output shapes:\n  \
    groups             {\"groups\":[[[dataset,record],...],...]}\n  \
    similarity_scores  {\"similarity_scores\":[[[d0,r0],[d1,r1],score],...]}\n  \
    permutations       {\"permutations\":[[...],[...]],\"rows\":n,\"mask\":[...]}\n  \
    mapping            {\"mapping\":{\"row in party 0\":\"row in party 1\",...}} (pre-1.13 result)")]
pub struct LinkArgs {
    /// Dice threshold, 0 < T <= 1; pairs scoring >= T are candidates
    #[arg(short, long)]
    pub threshold: f64,
    /// The result: groups (default), similarity_scores, permutations or mapping
    #[arg(long = "type", visible_alias = "result-type", value_name = "KIND")]
    pub kind: Option<String>,
    /// Write the result to FILE ('-': stdout, the default). For compatibility, a result kind
    /// (groups, similarity_scores, permutations, mapping) here means --type KIND; write a file
    /// of that name as ./NAME
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<String>,
    /// Use the files' blocks (a blocking project): every JSON file must carry blocks
    #[arg(long)]
    pub blocks: bool,
    /// Read every FILE as raw concatenated encodings of BYTES bytes each
    #[arg(long, value_name = "BYTES")]
    pub binary_size: Option<usize>,
    /// With --binary-size: each party's blocks file, one per FILE in order; implies --blocks
    #[arg(long, value_name = "F,F", value_delimiter = ',')]
    pub blocks_files: Option<Vec<String>>,
    /// Target comparisons per shard (as the service)
    #[arg(long, value_name = "N", default_value_t = shared::engine::shard::DEFAULT_TARGET_COMPARISONS)]
    pub shard_size: u64,
    /// Seed of the permutations (default: random)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Draw the progress bar even when stderr is not a terminal
    #[arg(long)]
    pub progress: bool,
    /// Party i's encodings
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<String>,
}

impl LinkArgs {
    pub fn into_options(self) -> Result<link::LinkOptions, UsageError> {
        let usage = |msg: String| UsageError::new("link", msg);
        let (kind, output_file) = match (self.kind, self.output) {
            (Some(kind), file) => (kind, file),
            (None, Some(o)) if link::OutputKind::parse(&o).is_some() => (o, None),
            (None, file) => ("groups".to_owned(), file),
        };
        let output = link::OutputKind::parse(&kind)
            .ok_or_else(|| usage(format!("--type must be groups, similarity_scores, permutations or mapping, got '{kind}'")))?;
        let options = link::LinkOptions {
            threshold: self.threshold,
            output,
            output_file: output_file.filter(|f| f != "-").map(PathBuf::from),
            blocks: self.blocks || self.blocks_files.is_some(),
            binary_size: self.binary_size,
            blocks_files: self.blocks_files,
            shard_size: self.shard_size,
            seed: self.seed,
            progress: self.progress,
            files: self.files,
        };
        options.validate().map_err(usage)?;
        Ok(options)
    }
}

#[derive(Debug, Args)]
#[command(after_help = "The suggested threshold is the bottom of the deepest valley between two modes of the \
    histogram of log(1 + count), smoothed over 3 bins: the gap between non-matches and matches. \
    Precision and recall (with --truth) are per pair, before the greedy solver: precision = true pairs \
    scoring >= t / pairs scoring >= t; recall = true pairs scoring >= t / all true pairs.")]
pub struct HistogramArgs {
    /// A similarity_scores result (`pprl results` / `pprl link --type similarity_scores`)
    #[arg(value_name = "SCORES.json", conflicts_with_all = ["encodings", "run"])]
    pub scores: Option<PathBuf>,
    /// Compute the scores from two parties' encodings instead (needs --threshold)
    #[arg(long, num_args = 2, value_names = ["A", "B"], requires = "threshold")]
    pub encodings: Option<Vec<String>>,
    /// Lowest score computed with --encodings
    #[arg(short, long)]
    pub threshold: Option<f64>,
    /// Fetch the scores from the service: this run's result (with --project and a result token)
    #[arg(long, requires = "project")]
    pub run: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub server: ServiceArgs,
    /// Ground truth CSV (header, then `row_a,row_b` lines): colours matches and non-matches and
    /// prints precision/recall at each threshold
    #[arg(long, value_name = "CSV")]
    pub truth: Option<PathBuf>,
    /// Write the chart as SVG to FILE
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Number of bins
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(4..=1000))]
    pub bins: u32,
}

impl HistogramArgs {
    pub fn into_options(self) -> anyhow::Result<histogram::HistogramOptions> {
        let source = match (self.scores, self.encodings, self.run) {
            (Some(path), None, None) => histogram::ScoresSource::File(path),
            (None, Some(files), None) => histogram::ScoresSource::Encodings { files, threshold: self.threshold.unwrap_or(0.5) },
            (None, None, Some(run)) => histogram::ScoresSource::Service {
                client: self.server.client()?,
                project: self.project.unwrap_or_default(),
                run,
                token: self.token.require("histogram")?,
            },
            _ => return Err(UsageError::new("histogram", "give SCORES.json, --encodings A B, or --project and --run").into()),
        };
        Ok(histogram::HistogramOptions { source, truth: self.truth, svg: self.output, bins: self.bins as usize })
    }
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// A party's encodings ({"clks": [...]}, clknblocks or encodings JSON)
    #[arg(value_name = "ENCODINGS.json")]
    pub encodings: PathBuf,
    /// Also write the chart as SVG to FILE
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl DescribeArgs {
    pub fn into_options(self) -> describe::DescribeOptions {
        describe::DescribeOptions { encodings: self.encodings, svg: self.output }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    /// The sample
    #[arg(long, default_value = "data/febrl4")]
    pub data: PathBuf,
    /// Dice threshold
    #[arg(short, long, default_value_t = 0.8)]
    pub threshold: f64,
}

// ------------------------------------------------------------------ service commands

#[derive(Debug, Args)]
pub struct CreateProjectArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    /// Result type
    #[arg(long = "type", default_value = "groups", value_parser = ["groups", "permutations", "similarity_scores"])]
    pub result_type: String,
    /// Number of data providers (more than 2 needs groups)
    #[arg(long, default_value_t = 2)]
    pub parties: u32,
    /// The clkhash linkage schema (default {})
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// A name for the project
    #[arg(long, default_value = "")]
    pub name: String,
    /// The parties upload blocks with their encodings (anonlink-client: --blocked)
    #[arg(long, visible_alias = "blocked")]
    pub blocking: bool,
    /// Similarity scores across 3 or more parties (an extension of the reference API; see
    /// docs/api-compatibility.md)
    #[arg(long)]
    pub multiparty: bool,
    /// Write the answer (with the tokens) to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl CreateProjectArgs {
    pub fn into_options(self) -> anyhow::Result<runs::CreateProjectOptions> {
        let schema = match &self.schema {
            Some(path) => serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
                .with_context(|| format!("{} is not JSON", path.display()))?,
            None => serde_json::json!({}),
        };
        Ok(runs::CreateProjectOptions {
            result_type: self.result_type,
            parties: self.parties,
            schema,
            name: self.name,
            blocking: self.blocking,
            multiparty: self.multiparty,
            output: self.output,
        })
    }
}

#[derive(Debug, Args)]
#[command(after_help = "ENCODINGS is a clkhash/anonlink-client JSON file ({\"clks\": [base64, ...]}) or a binary file of \
    fixed-size encodings (give --encoding-size). The client asks the service for temporary credentials and \
    uploads straight to the object store in parts (with retries and a progress bar), then tells the service \
    where the data is. When the service has that feature disabled, it uploads through the REST API instead. \
    Prints {\"receipt_token\": ...} on success.")]
pub struct UploadArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    /// The project
    #[arg(long)]
    pub project: String,
    /// The party's update token
    #[command(flatten)]
    pub token: TokenArgs,
    /// The blocks of these encodings (projects with blocking): blocklib's JSON ({"blocks": {"<record>": [ids]}}) or, named *.ndjson, one {"<record>": [ids]} per line; checked as a stream and sent as NDJSON
    #[arg(long, value_name = "FILE")]
    pub blocks: Option<PathBuf>,
    /// Bytes per encoding, for binary files (e.g. 128)
    #[arg(long, value_name = "BYTES")]
    pub encoding_size: Option<usize>,
    /// Multipart part size in MiB (grown for files over 640 GB)
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub part_size: u64,
    /// Parts in flight at once (memory = N x part size)
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Reach the object store by this address instead of the announced one
    #[arg(long, value_name = "HOST[:PORT]")]
    pub endpoint: Option<String>,
    /// Ask for new credentials when the current ones have less than SECS left (default 300)
    #[arg(long, value_name = "SECS")]
    pub renew_before: Option<u64>,
    /// Upload through the REST API even when the object store is offered
    #[arg(long, visible_aliases = ["to-entityservice", "to_entityservice"])]
    pub direct: bool,
    /// Draw the progress bar even when stderr is not a terminal
    #[arg(long)]
    pub progress: bool,
    /// Write the receipt to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The encodings
    #[arg(value_name = "ENCODINGS")]
    pub file: PathBuf,
}

impl UploadArgs {
    pub fn into_options(self) -> anyhow::Result<upload::UploadOptions> {
        Ok(upload::UploadOptions {
            client: self.server.client()?,
            renewer: self.server.client()?,
            token: self.token.require("upload")?,
            project: self.project,
            blocks: self.blocks,
            encoding_size: self.encoding_size,
            part_mib: self.part_size,
            concurrency: self.concurrency,
            endpoint: self.endpoint,
            renew_before: self.renew_before,
            direct: self.direct,
            progress: self.progress,
            output: self.output,
            file: self.file,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    /// The project
    #[arg(long)]
    pub project: String,
    /// The project's result token
    #[command(flatten)]
    pub token: TokenArgs,
    /// Dice threshold, 0 < T <= 1
    #[arg(short, long)]
    pub threshold: f64,
    /// A name for the run
    #[arg(long, default_value = "")]
    pub name: String,
    /// Groups results carry the score of every candidate pair inside each group (an extension
    /// of the reference API; see docs/api-compatibility.md)
    #[arg(long)]
    pub group_scores: bool,
    /// Write the answer (with the run id) to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl RunArgs {
    pub fn into_options(self) -> anyhow::Result<runs::RunOptions> {
        Ok(runs::RunOptions {
            token: self.token.require("run")?,
            project: self.project,
            threshold: self.threshold,
            name: self.name,
            group_scores: self.group_scores,
            output: self.output,
        })
    }
}

/// How often `--watch` asks the service.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Follow the run until it completes or fails
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between two questions while watching
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,
    /// Draw the progress bar even when stderr is not a terminal
    #[arg(long)]
    pub progress: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    /// The project (with --run)
    #[arg(long, requires = "run")]
    pub project: Option<String>,
    /// A run: show its status instead of the service's
    #[arg(long, requires = "project")]
    pub run: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Write the status to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl StatusArgs {
    pub fn into_options(self) -> anyhow::Result<runs::StatusOptions> {
        let run = match (self.project, self.run) {
            (Some(project), Some(run)) => Some(runs::RunRef { project, run, token: self.token.require("status")? }),
            _ => {
                if self.watch.watch {
                    return Err(UsageError::new("status", "--watch follows a run: give --project and --run").into());
                }
                None
            }
        };
        Ok(runs::StatusOptions { run, watch: watch_options(&self.watch), output: self.output })
    }
}

fn watch_options(w: &WatchArgs) -> Option<runs::Watch> {
    w.watch.then(|| runs::Watch { interval: std::time::Duration::from_secs_f64(w.interval.max(0.1)), progress: w.progress })
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub run: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Write the result to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl ResultsArgs {
    pub fn into_options(self) -> anyhow::Result<runs::ResultsOptions> {
        Ok(runs::ResultsOptions {
            run: runs::RunRef { token: self.token.require("results")?, project: self.project, run: self.run },
            watch: watch_options(&self.watch),
            output: self.output,
        })
    }
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub run: String,
    /// The project's result token
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Debug, Args)]
pub struct DeleteProjectArgs {
    #[command(flatten)]
    pub server: ServiceArgs,
    #[arg(long)]
    pub project: String,
    /// The project's result token
    #[command(flatten)]
    pub token: TokenArgs,
}

#[cfg(test)]
mod tests;
