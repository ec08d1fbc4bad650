//! `pprl`: the offline linkage twin of the service (`pprl link`) and a client for it
//! (`create-project`, `upload`, `run`, `status`, `results`, `demo`).
//!
//! Kept thin: argument dispatch and command code live in [`commands`]; this file only maps
//! errors to exit codes (2 for usage errors, 1 for everything else).

mod args;
mod client;
mod commands;
mod object_store;
mod progress;

use std::process::ExitCode;

use args::UsageError;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match commands::dispatch(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                eprintln!("pprl: {usage}");
                if usage.command.is_empty() {
                    eprintln!("Try 'pprl help'.");
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
