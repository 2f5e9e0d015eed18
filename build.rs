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
//!
//! A release build for x86_64 Linux also lays out the binary's code: the
//! functions a running daemon executes (`deploy/build/hot-functions.txt`)
//! come first and together, so the pages of code it keeps resident are
//! those it runs rather than every page the kernel's fault-around maps
//! beside them (`linetokd bench`: 16.3 → 10.1 MiB of file-backed RSS at
//! 1,000 groups, CPU unchanged). Only for `x86_64-unknown-linux-gnu`,
//! whose default linker since Rust 1.90 is the bundled LLD, which reads
//! the ordering file: a toolchain older or without it, a build that picks
//! its own linker (`-C linker`, a linker flavour, `-fuse-ld`), or one with
//! `LINETOKD_NO_SYMBOL_ORDERING` set is left alone. A name the list
//! holds that the build lacks (the code changed since the list was made)
//! costs only its place, never the build; `deploy/build/hot-functions.sh`
//! makes the list again.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the binary is built from, for the `-dirty` mark
/// (`tests/it/cli_output.rs` asks git about the same list).
const SOURCES: [&str; 7] = [
    "src",
    "migrations",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    "deploy/build/hot-functions.txt",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = commit().unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LINETOKD_GIT_COMMIT={commit}");
    order_hot_functions();
}

/// The list of functions to lay out first, relative to the crate.
const HOT_FUNCTIONS: &str = "deploy/build/hot-functions.txt";

/// Passes `HOT_FUNCTIONS` to LLD as its symbol ordering file, for the
/// release binary of the one target whose default linker is LLD, and only
/// when that default is surely the linker: GNU ld and gold do not know the
/// option and would fail the link.
fn order_hot_functions() {
    println!("cargo:rerun-if-changed={HOT_FUNCTIONS}");
    println!("cargo:rerun-if-env-changed=LINETOKD_NO_SYMBOL_ORDERING");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if env("TARGET") != "x86_64-unknown-linux-gnu"
        || env("PROFILE") != "release"
        || std::env::var_os("LINETOKD_NO_SYMBOL_ORDERING").is_some()
        || chooses_own_linker(&env("CARGO_ENCODED_RUSTFLAGS"))
        || std::env::var_os("RUSTC_LINKER").is_some()
        || !ships_default_lld(&env("RUSTC"))
    {
        return;
    }
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = PathBuf::from(dir).join(HOT_FUNCTIONS);
    if list.is_file() {
        // `-Xlinker` pairs rather than `-Wl,`, which would split a path
        // with a comma in it.
        for arg in [
            "-Xlinker".to_owned(),
            format!("--symbol-ordering-file={}", list.display()),
            "-Xlinker".to_owned(),
            "--no-warn-symbol-ordering".to_owned(),
        ] {
            println!("cargo:rustc-link-arg-bin=linetokd={arg}");
        }
    }
}

/// True when the flags pick a linker, a linker flavour or a `-fuse-ld`
/// (`-C linker=`, `-C link-self-contained`, `-C linker-flavor`,
/// `-Z linker-features`, `-C link-arg=-fuse-ld=bfd`).
fn chooses_own_linker(encoded_rustflags: &str) -> bool {
    encoded_rustflags.split('\x1f').any(|flag| {
        flag.contains("linker") || flag.contains("link-self-contained") || flag.contains("fuse-ld")
    })
}

/// True when `rustc` is 1.90 or later (LLD became x86_64 Linux's default
/// then) and its sysroot holds the bundled LLD that default uses (a
/// distribution's rustc may be built without it, and keep the system ld).
fn ships_default_lld(rustc: &str) -> bool {
    let rustc = if rustc.is_empty() { "rustc" } else { rustc };
    let output = |args: &[&str]| {
        Command::new(rustc)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let new_enough = output(&["--version"]).is_some_and(|v| {
        let mut parts = v
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (1, 90)
    });
    let bundled = output(&["--print", "sysroot"]).is_some_and(|root| {
        Path::new(root.trim())
            .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
            .is_file()
    });
    new_enough && bundled
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
