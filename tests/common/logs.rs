//! The logs of a bridge running in this test's runtime, captured: some things the bridge does
//! on its own (re-reading a key file) show only in its logs, and a test waits for that line
//! instead of for a time.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// Everything logged on this thread (at `INFO` and above) since [`CapturedLogs::start`], as
/// the bridge's plain-text format prints it.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures this thread's logs until the guard is dropped. A `#[tokio::test]` runtime runs
    /// the in-process bridge's tasks on the test's thread, so this sees the bridge's logs.
    pub fn start() -> (CapturedLogs, DefaultGuard) {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The logs so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Whether some line holds every one of `parts`.
    pub fn has_line(&self, parts: &[&str]) -> bool {
        self.text().lines().any(|l| parts.iter().all(|p| l.contains(p)))
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
