//! Headless chromium for the dashboard's pages (Debian's `chromium`, which
//! `.ci/run` installs).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser on PATH, if one is installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// The DOM chromium builds from the page at `url` (after its scripts
/// ran), or None, having said so, where no browser is installed: the
/// caller has checked the page's HTML without one.
pub fn dump_dom(url: &str) -> Option<String> {
    let Some(browser) = chromium() else {
        eprintln!(
            "chromium is not installed (.ci/run installs it): the page was checked without it"
        );
        return None;
    };
    let profile = tempfile::tempdir().expect("a profile folder");
    Some(headless(&browser, profile.path(), &["--dump-dom"], url))
}

/// Runs headless chromium with `args` then `url`; returns stdout.
pub fn headless(browser: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
