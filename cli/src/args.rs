//! A small hand-written argument parser for commands that parse their own arguments (`synth`;
//! everything else is declared with clap in `cli.rs`): `--name value`, `--name=value`, boolean `--flag`s and
//! positional arguments, with errors that say which command and which option went wrong.
//! (Enough for the few options the commands have; no dependency needed.)

use std::fmt;
use std::str::FromStr;

/// A mistake in how the command was called: reported with exit code 2 and a usage hint.
#[derive(Debug)]
pub struct UsageError {
    /// The subcommand, for the "try `pprl <command> --help`" hint (empty for the top level).
    pub command: String,
    pub message: String,
}

impl UsageError {
    pub fn new(command: &str, message: impl Into<String>) -> Self {
        Self { command: command.to_owned(), message: message.into() }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsageError {}

/// One command's arguments, consumed as options are looked up; [`Args::finish`] rejects
/// anything left over.
pub struct Args {
    command: String,
    /// (name without dashes, value) for every `--name value` / `--name=value` / `--flag`.
    options: Vec<(String, Option<String>)>,
    positionals: Vec<String>,
}

impl Args {
    /// Splits `argv` into options and positionals. `flags` are the boolean options (they take no
    /// value); every other `--name` takes one. `--` ends options.
    pub fn parse(command: &str, argv: &[String], flags: &[&str]) -> Result<Self, UsageError> {
        let mut options = Vec::new();
        let mut positionals = Vec::new();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                positionals.extend(it.by_ref().cloned());
                break;
            }
            let Some(name) = arg.strip_prefix("--") else {
                positionals.push(arg.clone());
                continue;
            };
            if let Some((name, value)) = name.split_once('=') {
                options.push((name.to_owned(), Some(value.to_owned())));
            } else if flags.contains(&name) {
                options.push((name.to_owned(), None));
            } else {
                let value = it.next().ok_or_else(|| {
                    UsageError::new(command, format!("option --{name} needs a value"))
                })?;
                options.push((name.to_owned(), Some(value.clone())));
            }
        }
        Ok(Self { command: command.to_owned(), options, positionals })
    }

    fn error(&self, message: impl Into<String>) -> UsageError {
        UsageError::new(&self.command, message)
    }

    /// Removes and returns a boolean flag.
    #[allow(dead_code)] // no self-parsing command has a flag today
    pub fn flag(&mut self, name: &str) -> Result<bool, UsageError> {
        let Some(pos) = self.options.iter().position(|(n, _)| n == name) else { return Ok(false) };
        match self.options.remove(pos) {
            (_, None) => Ok(true),
            (_, Some(_)) => Err(self.error(format!("--{name} takes no value"))),
        }
    }

    /// Removes and returns the raw value of `--name` (the last one wins if repeated).
    pub fn value(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.options.retain(|(n, v)| {
            if n == name {
                found = v.clone();
                false
            } else {
                true
            }
        });
        found
    }

    /// Removes and parses `--name`; `what` describes the expected value for the error message.
    pub fn parsed<T: FromStr>(&mut self, name: &str, what: &str) -> Result<Option<T>, UsageError> {
        match self.value(name) {
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|_| self.error(format!("--{name} must be {what}, got '{raw}'"))),
        }
    }

    /// Takes the positional arguments and checks that no unknown option is left.
    pub fn finish(self) -> Result<Vec<String>, UsageError> {
        if let Some((name, _)) = self.options.first() {
            return Err(self.error(format!("unknown option --{name}")));
        }
        Ok(self.positionals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_flags_and_positionals() {
        let mut a = Args::parse("link", &argv("a.json --threshold=0.8 --blocks --output groups b.json"), &["blocks"]).unwrap();
        assert!(a.flag("blocks").unwrap());
        assert_eq!(a.parsed::<f64>("threshold", "a number").unwrap(), Some(0.8));
        assert_eq!(a.value("output").as_deref(), Some("groups"));
        assert_eq!(a.finish().unwrap(), vec!["a.json", "b.json"]);
    }

    #[test]
    fn errors() {
        assert!(Args::parse("link", &argv("--threshold"), &[]).is_err());
        let a = Args::parse("link", &argv("--nope 1"), &[]).unwrap();
        assert!(a.finish().is_err());
        let mut a = Args::parse("link", &argv("--threshold x"), &[]).unwrap();
        assert!(a.parsed::<f64>("threshold", "a number").is_err());
    }
}
