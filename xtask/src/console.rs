//! The operator's console (`console/`, a Vite build of Preact and uPlot in TypeScript) and what
//! its browser tests need: `npm ci` from the lock file, a type check and a build into
//! `console/dist`, which `runtime/build.rs` puts into the binary; Debian's Chromium and
//! ChromeDriver, installed with apt-get when missing.

use std::process::Command;

use crate::{Result, on_path, root, run};

/// Build the console into `console/dist`. `required`: fail without npm (the tests); otherwise
/// say what is missing and go on (the binary then serves a page saying how to get it).
pub(crate) fn build_console(required: bool) -> Result<()> {
    let dir = root().join("console");
    if !on_path("npm") {
        let why = "npm is not on PATH: the console needs Node.js 20.19 or later with npm";
        if required {
            return Err(why.to_owned());
        }
        eprintln!("xtask: warning: {why}; building the binary without it");
        return Ok(());
    }
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let stale = match (modified(&lock), modified(&installed)) {
        (Some(lock), Some(installed)) => lock > installed,
        _ => true,
    };
    if stale {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir))?;
    }
    run(Command::new("npm").args(["run", "build"]).current_dir(&dir))
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Chromium and ChromeDriver for the browser tests (Debian packages `chromium`,
/// `chromium-driver`).
pub(crate) fn ensure_browser() -> Result<()> {
    if on_path("chromium") && on_path("chromedriver") {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(
            "the console's browser tests need Chromium and ChromeDriver (Debian packages \
             chromium and chromium-driver): install them and run again"
                .to_owned(),
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(["chromium", "chromium-driver"]))
}
