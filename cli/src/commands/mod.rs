//! The commands. Each module's logic runs on a plain options struct (or, for `synth`, its own
//! argument list); [`crate::cli`] declares the command line and builds those structs, so the
//! command code never depends on how it was called.

pub mod demo;
pub mod describe;
pub mod histogram;
pub mod link;
pub mod plan;
pub mod runs;
pub mod synth;
pub mod upload;

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// True when the command was asked for its help text (commands that parse their own arguments).
pub(crate) fn wants_help(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--help" || a == "-h")
}

/// Writes a command's answer to `path` (`-o FILE`), or to stdout (no path, or `-`), with a
/// trailing newline.
pub(crate) fn write_output(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match path.filter(|p| p.as_os_str() != "-") {
        Some(path) => std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").context("writing to stdout")
        }
    }
}
