//! The dashboard in a real browser: Debian's chromium, headless, loads the
//! overview of a running daemon with jobs in several states; the rendered
//! DOM must show the queues and their counts, and a screenshot is saved as
//! a test artifact. `.ci/run` installs chromium; where it is missing the
//! test says so and passes without checking.

mod common;

use std::path::PathBuf;

use common::browser::{chromium, headless};
use common::{wait_for, Home, NOW, PATIENCE};

#[test]
fn chromium_renders_the_overview_with_queues_and_counts() {
    let Some(browser) = chromium() else {
        eprintln!("chromium is not installed (.ci/run installs it): the browser test is skipped");
        return;
    };
    let port = common::free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\nlong_running = \"200ms\"\n[daemon]\nshutdown_grace = \"100ms\"\n"
    ));
    home.migrate();
    let mut values = vec![
        format!("('noop', '{{\"sleep_ms\":60000}}', 'reports', 0, {NOW}, 1, NULL)"),
        format!("('bogus', '{{}}', 'mail', 0, {NOW}, 1, NULL)"),
        format!("('bogus', '{{}}', 'mail', 0, {NOW}, 1, NULL)"),
        format!("('noop', '{{}}', 'nightly', 0, {NOW} + 3600000, 1, NULL)"),
    ];
    values.extend((0..7).map(|_| format!("('noop', '{{}}', 'default', 0, {NOW}, 1, NULL)")));
    let ids = home.insert(&values.join(", "));
    let daemon = home.daemon();
    home.wait_state(ids[0], "running");
    home.wait_count(
        "SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'dead')",
        9,
    );
    let url = format!("http://127.0.0.1:{port}/");
    // The long job is flagged once past the threshold.
    wait_for(PATIENCE, || {
        let page = ureq::get(&url).call().ok()?.into_string().ok()?;
        page.contains("<table id=\"long-running\">").then_some(())
    })
    .expect("the long job is flagged");

    let profile = tempfile::tempdir().unwrap();
    let dom = headless(&browser, profile.path(), &["--dump-dom"], &url);
    for queue in ["default", "mail", "reports", "nightly"] {
        assert!(
            dom.contains(&format!("data-queue=\"{queue}\"")),
            "{queue} in\n{dom}"
        );
    }
    let row = |queue: &str| {
        dom.split(&format!("<tr data-queue=\"{queue}\">"))
            .nth(1)
            .and_then(|rest| rest.split("</tr>").next())
            .unwrap_or_else(|| panic!("no row for {queue}"))
            .to_string()
    };
    assert!(
        row("default").contains("<td class=\"n ok\">7</td>"),
        "{}",
        row("default")
    );
    assert!(
        row("mail").contains("<td class=\"n dead\">2</td>"),
        "{}",
        row("mail")
    );
    assert!(
        row("nightly").contains("<td class=\"n\">1</td>"),
        "{}",
        row("nightly")
    );
    assert!(dom.contains("id=\"long-running\""), "{dom}");
    assert!(dom.contains("<svg"), "charts render");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(png.len() > 10_000, "a real picture, {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
    daemon.stop();
}
