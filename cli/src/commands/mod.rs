//! The subcommand dispatcher. Each subcommand is a module with a `run(&[String])` entry point
//! and a `USAGE` text; adding one means adding a module and a line to [`COMMANDS`].

mod demo;
mod link;
mod plan;
mod runs;
mod synth;
mod upload;

use crate::args::{Args, UsageError};

type Run = fn(&[String]) -> anyhow::Result<()>;

/// (name, one-line summary, entry point) of every subcommand.
const COMMANDS: &[(&str, &str, Run)] = &[
    ("link", "link parties' encodings offline, exactly as the service would", link::run),
    ("demo", "link the FEBRL4 sample through a running service and report accuracy", demo::run),
    ("plan", "estimate a run's shards, time and AWS cost before posting it", plan::run),
    ("synth", "generate two parties' CLKs with known matches (and blocks) for benchmarks", synth::run),
    ("create-project", "create a linkage project on the service; prints its tokens", runs::create_project),
    ("upload", "upload a party's encodings (object store in parts, else the API)", upload::run),
    ("run", "start a linkage run on a project", runs::run),
    ("status", "show a run's status (--watch follows it to the end)", runs::status),
    ("results", "fetch a run's result", runs::results),
];

fn help() -> String {
    let mut out = String::from(
        "pprl: privacy-preserving record linkage (the Anonlink Entity Service, serverless)\n\n\
         Usage: pprl <command> [options]\n\nCommands:\n",
    );
    for (name, summary, _) in COMMANDS {
        out.push_str(&format!("  {name:<15} {summary}\n"));
    }
    out.push_str("  help            show this message\n\nRun 'pprl <command> --help' for a command's options.\n");
    out
}

/// Runs the subcommand named by `argv[0]` with the rest of the arguments.
pub fn dispatch(argv: &[String]) -> anyhow::Result<()> {
    let Some((command, rest)) = argv.split_first() else {
        return Err(UsageError::new("", "no command given").into());
    };
    match command.as_str() {
        "help" | "--help" | "-h" => {
            print!("{}", help());
            Ok(())
        }
        "--version" | "-V" => {
            println!("pprl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        name => match COMMANDS.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, run)) => run(rest),
            None => Err(UsageError::new("", format!("unknown command '{name}'")).into()),
        },
    }
}

/// True when the command was asked for its help text.
pub(crate) fn wants_help(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--help" || a == "-h")
}

/// `--server`, else `$API_URL`, else the local stack's address.
pub(crate) fn server_arg(args: &mut Args) -> String {
    args.value("server").or_else(|| std::env::var("API_URL").ok()).unwrap_or_else(|| "http://127.0.0.1:8851".into())
}
