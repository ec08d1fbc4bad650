//! Lambda's per-invocation log lines (`START`, `END`, `REPORT`), each prefixed with the
//! function's name because one runner log holds every function's lines.
//!
//! The fields are tab-separated as in CloudWatch Logs:
//! `compare REPORT RequestId: <id>\tDuration: 812.37 ms\tBilled Duration: 813 ms\tMemory Size: 3008 MB\tMax Memory Used: 41 MB`
//! and a killed invocation ends with `\tStatus: timeout`, or `\tStatus: error\tError Type:
//! Runtime.OutOfMemory` (`Runtime.ExitError` for any other death), as Lambda's do.

use std::fmt;
use std::time::Duration;

/// How an invocation ended, as far as the REPORT line is concerned. An error the function
/// returned through the Runtime API is a completed invocation (Lambda's REPORT has no Status
/// for it either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Timeout,
    OutOfMemory,
    ExitError,
}

pub struct Report<'a> {
    pub function: &'a str,
    pub request_id: &'a str,
    pub duration: Duration,
    pub memory_size_mb: u64,
    pub max_memory_used_bytes: u64,
    pub ending: Ending,
}

const MIB: u64 = 1024 * 1024;

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.duration.as_secs_f64() * 1000.0;
        // Lambda bills whole milliseconds, rounded up; its MB are MiB.
        let billed = self.duration.as_nanos().div_ceil(1_000_000);
        let used = self.max_memory_used_bytes.div_ceil(MIB);
        write!(
            f,
            "{} REPORT RequestId: {}\tDuration: {ms:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB\tMax Memory Used: {used} MB",
            self.function, self.request_id, self.memory_size_mb
        )?;
        match self.ending {
            Ending::Completed => Ok(()),
            Ending::Timeout => write!(f, "\tStatus: timeout"),
            Ending::OutOfMemory => write!(f, "\tStatus: error\tError Type: Runtime.OutOfMemory"),
            Ending::ExitError => write!(f, "\tStatus: error\tError Type: Runtime.ExitError"),
        }
    }
}

pub fn start_line(function: &str, request_id: &str) -> String {
    format!("{function} START RequestId: {request_id} Version: $LATEST")
}

pub fn end_line(function: &str, request_id: &str) -> String {
    format!("{function} END RequestId: {request_id}")
}

/// Writes one line to the runner's stdout (its log) in one write, so lines of concurrent
/// instances and of the functions (which share the log file) do not interleave within a line.
pub fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ending: Ending) -> String {
        Report {
            function: "compare",
            request_id: "abc",
            duration: Duration::from_micros(812_371),
            memory_size_mb: 3008,
            max_memory_used_bytes: 40 * MIB + 1,
            ending,
        }
        .to_string()
    }

    #[test]
    fn report_lines_have_lambdas_fields() {
        assert_eq!(
            report(Ending::Completed),
            "compare REPORT RequestId: abc\tDuration: 812.37 ms\tBilled Duration: 813 ms\tMemory Size: 3008 MB\tMax Memory Used: 41 MB"
        );
        assert!(report(Ending::Timeout).ends_with("Max Memory Used: 41 MB\tStatus: timeout"));
        assert!(report(Ending::OutOfMemory).ends_with("\tStatus: error\tError Type: Runtime.OutOfMemory"));
        assert!(report(Ending::ExitError).ends_with("\tStatus: error\tError Type: Runtime.ExitError"));
    }
}
