//! Build script: records the git commit the binary is built from, for
//! `linetokd --version` (`LINETOKD_GIT_COMMIT`).
//!
//! A build from a tree whose sources (`SOURCES`) differ from HEAD is
//! marked `-dirty` (`3b2b432-dirty`), as `git describe --dirty` does: the
//! commit alone would claim figures (`linetokd bench` prints it) for code
//! that commit does not hold.
//!
//! Outside a git checkout (a source tarball, `git archive`, a crate
//! unpacked by a packager) or without git, the commit is "unknown": the
//! build never fails for want of git. Cargo re-runs this script when HEAD
//! moves (a commit, a checkout), found through `git rev-parse --git-path`
//! so worktrees and packed refs work too, when the index changes (a file
//! staged or restored), and when a file the binary is built from changes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the binary is built from, for the `-dirty` mark
/// (`tests/it/cli_output.rs` asks git about the same list).
const SOURCES: [&str; 5] = ["src", "migrations", "build.rs", "Cargo.toml", "Cargo.lock"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = commit().unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LINETOKD_GIT_COMMIT={commit}");
}

/// The short commit of HEAD, if this crate's directory is the top of a git
/// checkout (not merely somewhere inside another repository).
fn commit() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    if !same_dir(Path::new(&top), &manifest_dir) {
        return None;
    }
    // HEAD itself (moves on checkout), the ref it points at (moves on
    // commit) and packed-refs (where `git gc` puts refs). Only files that
    // exist: a missing one would make cargo re-run the script every build.
    let mut watched = vec![
        "HEAD".to_owned(),
        "packed-refs".to_owned(),
        "index".to_owned(),
    ];
    if let Some(reference) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(reference);
    }
    for name in watched {
        if let Some(path) = git(&manifest_dir, &["rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    // What the binary is built from: an edit there makes the build dirty
    // (or clean again) without touching git's own files.
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let commit = git(&manifest_dir, &["rev-parse", "--short", "HEAD"])?;
    // Any output means a tracked file of `SOURCES` differs from HEAD;
    // untracked files (a bench's output, an editor's backup) and the docs
    // and tests do not count.
    // Without optional locks: `git status` would otherwise take the
    // index's lock (and may rewrite it), racing a `git add` beside the
    // build.
    let mut status = vec![
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
    ];
    status.extend(SOURCES);
    let dirty = git(&manifest_dir, &status).is_some();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// Runs git in `dir`; its trimmed stdout when it succeeds with output.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
