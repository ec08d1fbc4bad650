//! `pprl`: the offline linkage twin of the service (`pprl link`), pictures to choose a threshold
//! (`histogram`, `describe`) and a client for the service (`create-project`, `upload`,
//! `run`/`create`, `status`, `results`, `delete`, `delete-project`, `demo`).
//!
//! Kept thin: the command line is declared in [`cli`] and command code lives in [`commands`];
//! this file only maps errors to exit codes (2 for usage errors, as clap's own, 1 for everything
//! else).

mod args;
mod cli;
mod client;
mod commands;
mod object_store;
mod progress;

use std::process::ExitCode;

use args::UsageError;
use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                eprintln!("pprl: {usage}");
                if usage.command.is_empty() {
                    eprintln!("Try 'pprl --help'.");
                } else {
                    eprintln!("Try 'pprl {} --help'.", usage.command);
                }
                ExitCode::from(2)
            } else if is_broken_pipe(&err) {
                // The reader went away (`pprl link ... | head`): nothing left to report.
                ExitCode::SUCCESS
            } else {
                eprintln!("pprl: error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
