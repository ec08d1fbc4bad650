//! Progress on stderr, drawn by `indicatif`: position, rate and ETA (bytes for uploads, counts for
//! comparisons).
//!
//! Hidden when stderr is not a terminal (unless `--progress` forces it), so piping or redirecting
//! a command's output never fills logs with bar frames; indicatif throttles redraws itself.

use std::time::Duration;

use indicatif::{ProgressDrawTarget, ProgressStyle};

pub struct ProgressBar {
    bar: indicatif::ProgressBar,
}

/// What the bar counts: bytes show as `12.5 MiB/1.0 GiB  40 MiB/s`, counts as `1.2M/4.0M  300k/s`.
#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Count,
}

impl ProgressBar {
    /// A bar counting items (comparisons, stages' progress).
    pub fn new(force: bool) -> Self {
        Self::with_unit(force, Unit::Count)
    }

    /// A bar counting bytes (uploads).
    pub fn bytes(force: bool) -> Self {
        Self::with_unit(force, Unit::Bytes)
    }

    fn with_unit(force: bool, unit: Unit) -> Self {
        // `stderr()` hides itself off a terminal; a `term_like` target always draws.
        let target = if force { ProgressDrawTarget::term_like(Box::new(console::Term::stderr())) } else { ProgressDrawTarget::stderr() };
        let template = match unit {
            Unit::Bytes => "[{bar:30}] {percent:>3}%  {bytes}/{total_bytes}  {binary_bytes_per_sec}  ETA {eta}  {msg}",
            Unit::Count => "[{bar:30}] {percent:>3}%  {human_pos}/{human_len}  {per_sec}  ETA {eta}  {msg}",
        };
        let style = ProgressStyle::with_template(template).expect("a valid template").progress_chars("#>.");
        let bar = indicatif::ProgressBar::with_draw_target(None, target).with_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        Self { bar }
    }

    /// A one-line status message (a phase without a measurable fraction).
    pub fn message(&mut self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    /// Moves the bar to `done` of `total`, labelled `label`.
    pub fn update(&mut self, done: u64, total: u64, label: &str) {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
        }
        self.bar.set_position(done);
        if self.bar.message() != label {
            self.bar.set_message(label.to_owned());
        }
    }

    /// Leaves the final frame (with the elapsed time) on its own line.
    pub fn finish(&mut self) {
        let elapsed = self.bar.elapsed().as_secs_f64();
        self.bar.finish_with_message(format!("done in {elapsed:.1}s"));
    }
}
