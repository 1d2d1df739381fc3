//! What the real-browser tests need on the machine: `node` (20+), Chromium at
//! `/usr/bin/chromium` (or `CHROMIUM_PATH`) and the harness's npm package. They fail, never
//! skip, without them, with how to install.

use std::path::{Path, PathBuf};

/// The crate root: the harness scripts run from there (`tests/browser/*.mjs`).
pub fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Checks that node, Chromium and playwright-core are installed; fails with how to install.
pub fn require_browser_tooling() {
    let install = "install the browser test tooling (CI does this):\n  \
                   apt-get install -y nodejs chromium\n  \
                   npm ci --prefix tests/browser\n\
                   see tests/browser/README.md";
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("`node --version` failed ({}); {install}", o.status),
        Err(e) => panic!("`node` not found on PATH ({e}); {install}"),
    }
    let chromium =
        std::env::var_os("CHROMIUM_PATH").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "Chromium not found at {} (set CHROMIUM_PATH to use another); {install}",
        chromium.display()
    );
    let playwright = crate_root().join("tests/browser/node_modules/playwright-core");
    assert!(playwright.is_dir(), "{} is missing; {install}", playwright.display());
}
