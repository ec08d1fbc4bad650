//! A hand-written progress bar on stderr, redrawn in place with `\r`.
//!
//! Only drawn when stderr is a terminal (or when asked with `--progress`), so piping or
//! redirecting the command's output never fills logs with bar frames. Redraws are throttled.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 30;
const MIN_REDRAW: Duration = Duration::from_millis(100);

pub struct ProgressBar {
    enabled: bool,
    started: Instant,
    last_draw: Option<Instant>,
}

impl ProgressBar {
    /// A bar that draws when stderr is a TTY, or always when `force` is set.
    pub fn new(force: bool) -> Self {
        Self { enabled: force || std::io::stderr().is_terminal(), started: Instant::now(), last_draw: None }
    }

    /// A one-line status message (a phase without a measurable fraction).
    pub fn message(&mut self, text: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
        }
    }

    /// Draws `[#####.....]  50%  label`, at most every 100 ms except for the final frame.
    pub fn update(&mut self, done: u64, total: u64, label: &str) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let last = done >= total;
        if !last && self.last_draw.is_some_and(|t| now - t < MIN_REDRAW) {
            return;
        }
        self.last_draw = Some(now);
        let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
        let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH - filled));
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K[{bar}] {:>3.0}%  {label}  {elapsed:.1}s", fraction * 100.0);
        let _ = err.flush();
    }

    /// Ends the bar's line so later output starts on a fresh line.
    pub fn finish(&mut self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "\r\x1b[2Kdone in {:.1}s", self.started.elapsed().as_secs_f64());
        }
    }
}
