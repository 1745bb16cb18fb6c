//! Host tests of the backends: their log lines on stderr, and captured per
//! thread while a test asks for them. One logger serves every backend's
//! tests, as `log` takes only one per process (a test linking blkback's and
//! netback's test helpers would otherwise capture nothing from the second).

extern crate std;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

struct StderrLog;
impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = format!("[{}] {}", r.level(), r.args());
        CAPTURED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(line.clone());
            }
        });
        std::eprintln!("{line}");
    }
    fn flush(&self) {}
}

std::thread_local! {
    /// Lines logged by this thread while [`capture_logs`] runs.
    static CAPTURED: core::cell::RefCell<Option<Vec<String>>> = const { core::cell::RefCell::new(None) };
}

static LOGGER: StderrLog = StderrLog;

/// Sends log lines to stderr (once per process).
pub fn init_log() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Runs `f` and returns what it returned and every log line this thread
/// logged meanwhile (the backends run on the test's thread).
pub fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    init_log();
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let lines = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, lines)
}
