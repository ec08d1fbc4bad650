//! Parsing tests: every flag, alias and environment fallback the command line promises.

use clap::Parser;

use super::*;

fn parse(line: &str) -> Result<Command, clap::Error> {
    let argv = std::iter::once("pprl").chain(line.split_whitespace());
    Cli::try_parse_from(argv).map(|cli| cli.command)
}

fn ok(line: &str) -> Command {
    parse(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn help_lists_every_command() {
    let help = <Cli as clap::CommandFactory>::command().render_help().to_string();
    for command in [
        "link", "histogram", "describe", "demo", "synth", "create-project", "upload", "run", "status", "results",
        "delete", "delete-project", "completions",
    ] {
        assert!(help.contains(&format!("  {command} ")), "{command} missing from\n{help}");
    }
    assert!(help.contains("[alias: create]"), "{help}");
}

#[test]
fn create_is_run_and_apikey_is_token() {
    let Command::Run(run) = ok("create --project p --apikey secret -t 0.8 --name n -o out.json") else { panic!() };
    assert_eq!((run.project.as_str(), run.token.token.as_deref(), run.threshold), ("p", Some("secret"), 0.8));
    assert_eq!(run.output.as_deref(), Some(std::path::Path::new("out.json")));
    let Command::Run(run) = ok("run --project p --token secret --threshold 0.9") else { panic!() };
    assert_eq!(run.token.resolve().unwrap().as_deref(), Some("secret"));
    assert!(!run.group_scores);
    let Command::Run(run) = ok("run --project p --token secret --threshold 0.9 --group-scores") else { panic!() };
    assert!(run.group_scores);
}

#[test]
fn token_file_and_conflicts() {
    let dir = std::env::temp_dir().join(format!("pprl-token-{}", std::process::id()));
    std::fs::write(&dir, "  from-file \n").unwrap();
    let line = format!("results --project p --run r --token-file {}", dir.display());
    let Command::Results(r) = ok(&line) else { panic!() };
    assert_eq!(r.token.resolve().unwrap().as_deref(), Some("from-file"));
    std::fs::remove_file(&dir).unwrap();
    assert!(parse("results --project p --run r --token a --token-file f").is_err(), "one token only");
}

#[test]
fn token_from_the_environment_when_no_option_gives_one() {
    // The only test that touches PPRL_TOKEN (tests share the process environment).
    let none = TokenArgs { token: None, token_file: None };
    // SAFETY: no other test in this crate reads or writes PPRL_TOKEN.
    unsafe { std::env::set_var(TOKEN_ENV, "from-env") };
    assert_eq!(none.resolve().unwrap().as_deref(), Some("from-env"));
    let given = TokenArgs { token: Some("given".into()), token_file: None };
    assert_eq!(given.resolve().unwrap().as_deref(), Some("given"), "an option wins over the environment");
    unsafe { std::env::remove_var(TOKEN_ENV) };
    assert!(none.require("results").unwrap_err().to_string().contains("PPRL_TOKEN"));
}

#[test]
fn status_without_a_run_is_the_service_status() {
    let Command::Status(s) = ok("status --server http://x:1 -o s.json") else { panic!() };
    assert_eq!(s.server.server, "http://x:1");
    let o = s.into_options().unwrap();
    assert!(o.run.is_none() && o.watch.is_none());
    let Command::Status(s) = ok("status --project p --run r --token t --watch --interval 0.5") else { panic!() };
    let o = s.into_options().unwrap();
    assert_eq!(o.run.as_ref().map(|r| r.run.as_str()), Some("r"));
    assert_eq!(o.watch.map(|w| w.interval.as_millis()), Some(500));
    assert!(parse("status --run r").is_err(), "--run needs --project");
    let Command::Status(s) = ok("status --watch") else { panic!() };
    assert!(s.into_options().is_err(), "--watch needs a run");
}

#[test]
fn results_watch_short_and_long() {
    for line in ["results --project p --run r --apikey t -w -o res.json", "results --project p --run r --token t --watch"] {
        let Command::Results(r) = ok(line) else { panic!() };
        assert!(r.watch.watch, "{line}");
    }
}

#[test]
fn delete_and_delete_project() {
    let Command::Delete(d) = ok("delete --project p --run r --apikey t") else { panic!() };
    assert_eq!((d.project.as_str(), d.run.as_str()), ("p", "r"));
    let Command::DeleteProject(d) = ok("delete-project --project p --token t") else { panic!() };
    assert_eq!(d.project, "p");
    assert!(parse("delete --project p").is_err(), "a run is required");
}

#[test]
fn retry_options_have_anonlink_client_names_and_defaults() {
    let Command::Status(s) = ok("status") else { panic!() };
    assert_eq!(s.server.retry(), RetryPolicy::default());
    assert_eq!(RetryPolicy::default(), RetryPolicy { multiplier_ms: 100, exponential_max_ms: 10_000, max_time_ms: 20_000 });
    let Command::Status(s) = ok("status --retry-multiplier 5 --retry-exponential-max 50 --retry-max-time 500") else { panic!() };
    assert_eq!(s.server.retry(), RetryPolicy { multiplier_ms: 5, exponential_max_ms: 50, max_time_ms: 500 });
}

#[test]
fn create_project_blocked_alias_type_and_output() {
    let Command::CreateProject(c) = ok("create-project --type similarity_scores --blocked --parties 3 -o p.json") else { panic!() };
    assert!(c.blocking);
    assert_eq!((c.result_type.as_str(), c.parties), ("similarity_scores", 3));
    assert!(c.output.is_some());
    assert!(parse("create-project --type nope").is_err());
    assert!(!c.multiparty);
    let Command::CreateProject(c) = ok("create-project --type similarity_scores --multiparty --parties 5") else { panic!() };
    assert!(c.multiparty && c.parties == 5);
}

#[test]
fn upload_aliases_and_output() {
    for flag in ["--direct", "--to-entityservice", "--to_entityservice"] {
        let line = format!("upload --project p --apikey t {flag} -o r.json clks.json");
        let Command::Upload(u) = ok(&line) else { panic!() };
        assert!(u.direct, "{flag}");
        assert_eq!(u.file, std::path::PathBuf::from("clks.json"));
    }
    let Command::Upload(u) = ok("upload --project p --token t --encoding-size 128 --part-size 8 --concurrency 2 --blocks b.json x.bin") else {
        panic!()
    };
    assert_eq!((u.encoding_size, u.part_size, u.concurrency), (Some(128), 8, 2));
}

#[test]
fn link_output_is_a_kind_for_compatibility_else_a_file() {
    let opts = |line: &str| {
        let Command::Link(l) = ok(line) else { panic!() };
        l.into_options()
    };
    let o = opts("link --threshold 0.8 --output similarity_scores a b").unwrap();
    assert_eq!((o.output, o.output_file.is_none()), (link::OutputKind::SimilarityScores, true));
    let o = opts("link -t 0.8 --type mapping -o out.json a b").unwrap();
    assert_eq!((o.output, o.output_file.as_deref()), (link::OutputKind::Mapping, Some(std::path::Path::new("out.json"))));
    let o = opts("link -t 0.8 -o result.json a b").unwrap();
    assert_eq!(o.output, link::OutputKind::Groups);
    assert!(opts("link -t 0.8 --type nope a b").is_err());
    assert!(opts("link -t 1.5 a b").is_err());
    assert!(opts("link -t 0.8 --type permutations a b c").is_err());
    let o = opts("link -t 0.8 --binary-size 128 --blocks-files x,y a b").unwrap();
    assert!(o.blocks);
    assert!(opts("link -t 0.8 --blocks-files x,y a b").is_err());
    assert!(opts("link -t 0.8 --binary-size 128 --blocks a b").is_err());
    assert!(parse("link a b").is_err(), "--threshold is required");
}

#[test]
fn histogram_sources() {
    assert!(ok("histogram scores.json -o chart.svg --truth t.csv --bins 40").is_histogram());
    assert!(ok("histogram --encodings a.json b.json -t 0.5").is_histogram());
    assert!(ok("histogram --project p --run r --token t").is_histogram());
    assert!(parse("histogram s.json --encodings a b -t 0.5").is_err(), "one source");
    assert!(parse("histogram --encodings a b").is_err(), "--encodings needs --threshold");
    assert!(parse("histogram s.json --bins 2").is_err());
    let Command::Histogram(h) = ok("histogram") else { panic!() };
    assert!(h.into_options().is_err(), "no source");
}

#[test]
fn describe_synth_and_completions() {
    let Command::Describe(d) = ok("describe clks.json -o pop.svg") else { panic!() };
    assert!(d.output.is_some());
    let Command::Synth { args } = ok("synth --records-a 10 --help") else { panic!() };
    assert_eq!(args, ["--records-a", "10", "--help"], "synth parses its own options");
    assert!(ok("completions bash").is_completions());
    assert!(parse("completions tcsh-nope").is_err());
}

impl Command {
    fn is_histogram(&self) -> bool {
        matches!(self, Command::Histogram(_))
    }
    fn is_completions(&self) -> bool {
        matches!(self, Command::Completions { .. })
    }
}
