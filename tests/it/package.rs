//! The Debian package (`deploy/debian/build-deb.sh`), built from this test
//! build's binary into a temp dir and read back with `dpkg-deb`: every
//! path the systemd deployment needs, with its owner and mode, the config
//! as the one conffile, the unit pointing at the packaged binary, the
//! control fields, and maintainer scripts that create the user and the
//! state directory. Skipped with a printed reason where `dpkg-deb` is not
//! installed; CI (`.ci/run`) insists on it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(program).is_file())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// One line of `dpkg-deb -c`: mode, owner/group, path (without the leading
/// `.`; directories keep their trailing `/`).
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    path: String,
}

fn contents(listing: &str) -> Vec<Entry> {
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "odd dpkg-deb -c line: {line}");
            Entry {
                mode: fields[0].to_owned(),
                owner: fields[1].to_owned(),
                path: fields[5].trim_start_matches('.').to_owned(),
            }
        })
        .collect()
}

#[test]
fn debian_package_holds_the_systemd_deployment() {
    if !installed("dpkg-deb") {
        println!("skipping: dpkg-deb not found (on Debian: apt-get install dpkg)");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let build = Command::new("bash")
        .arg(repo("deploy/debian/build-deb.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_linetokd"))
        .arg("--out")
        .arg(out_dir.path())
        // The test build's binary is about 200 MB; xz would take minutes.
        .args(["--compression", "none"])
        .env("DEBFULLNAME", "Package Test")
        .env("DEBEMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "build-deb.sh: {}",
        text(&build.stderr)
    );
    let deb = PathBuf::from(text(&build.stdout).trim());
    assert!(deb.starts_with(out_dir.path()), "{}", deb.display());
    let name = deb.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("linetokd_{}_", env!("CARGO_PKG_VERSION")))
            && name.ends_with(".deb"),
        "{name}"
    );
    // The build leaves nothing else behind in the output directory.
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");

    let entries = contents(&dpkg_deb(&["-c"], &deb));
    let entry = |path: &str| {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {entries:#?}"))
    };
    for (path, mode) in [
        // The package's root becomes the system's: never narrower.
        ("/", "drwxr-xr-x"),
        ("/etc/linetokd/", "drwxr-xr-x"),
        ("/usr/bin/linetokd", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/linetokd.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/linetokd.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/linetokd.conf", "-rw-r--r--"),
        ("/etc/linetokd/linetokd.toml", "-rw-r--r--"),
        ("/usr/share/man/man1/linetokd.1.gz", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/linetokd",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_linetokd", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/linetokd.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/linetokd/copyright", "-rw-r--r--"),
        (
            "/usr/share/doc/linetokd/examples/linetokd.toml",
            "-rw-r--r--",
        ),
    ] {
        let e = entry(path);
        assert_eq!(e.mode, mode, "{path}");
    }
    for e in &entries {
        assert_eq!(e.owner, "root/root", "{} must be root's", e.path);
    }
    // Nothing from the build machine or the repository's other files.
    for e in &entries {
        assert!(
            e.path.starts_with("/usr/") || e.path.starts_with("/etc/") || e.path == "/",
            "unexpected {}",
            e.path
        );
    }

    let info = dpkg_deb(&["-I"], &deb);
    for field in [
        "Package: linetokd",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Maintainer: Package Test <test@example.invalid>",
        "Depends: libc6, systemd (>= 248)",
    ] {
        assert!(info.contains(field), "{field} missing from:\n{info}");
    }
    for script in ["postinst", "prerm", "postrm", "conffiles", "control"] {
        assert!(info.contains(script), "{script} missing from:\n{info}");
    }

    let unpacked = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-R")
        .arg(&deb)
        .arg(unpacked.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |path: &str| std::fs::read_to_string(unpacked.path().join(path)).unwrap();

    assert_eq!(read("DEBIAN/conffiles"), "/etc/linetokd/linetokd.toml\n");
    assert_eq!(
        read("etc/linetokd/linetokd.toml"),
        std::fs::read_to_string(repo("deploy/systemd/linetokd.toml")).unwrap()
    );
    let unit = read("usr/lib/systemd/system/linetokd.service");
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/linetokd run --config /etc/linetokd/linetokd.toml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    assert_eq!(
        read("usr/lib/sysusers.d/linetokd.conf"),
        std::fs::read_to_string(repo("deploy/systemd/linetokd.sysusers")).unwrap()
    );
    assert!(
        read("usr/lib/tmpfiles.d/linetokd.conf")
            .lines()
            .any(|l| l == "d /var/lib/linetokd 0700 linetokd linetokd -"),
    );
    let postinst = read("DEBIAN/postinst");
    for needle in [
        "systemd-sysusers /usr/lib/sysusers.d/linetokd.conf",
        "systemd-tmpfiles --create /usr/lib/tmpfiles.d/linetokd.conf",
    ] {
        assert!(postinst.contains(needle), "{needle} missing from postinst");
    }
    // The packaged binary is this build's.
    assert_eq!(
        std::fs::read(unpacked.path().join("usr/bin/linetokd")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_linetokd")).unwrap()
    );
    for script in ["postinst", "prerm", "postrm"] {
        let check = Command::new("sh")
            .arg("-n")
            .arg(unpacked.path().join("DEBIAN").join(script))
            .output()
            .unwrap();
        assert!(check.status.success(), "{script}: {}", text(&check.stderr));
    }
}

#[test]
fn packaged_tmpfiles_entry_names_the_sysusers_user() {
    // The state directory belongs to the user sysusers.d creates.
    let sysusers = std::fs::read_to_string(repo("deploy/systemd/linetokd.sysusers")).unwrap();
    let user = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    let tmpfiles = std::fs::read_to_string(repo("deploy/debian/linetokd.tmpfiles")).unwrap();
    let entry: Vec<&str> = tmpfiles
        .lines()
        .find(|l| l.starts_with("d "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(entry[1], "/var/lib/linetokd");
    assert_eq!((entry[3], entry[4]), (user.as_str(), user.as_str()));
    let unit = std::fs::read_to_string(repo("deploy/systemd/linetokd.service")).unwrap();
    assert!(
        unit.lines().any(|l| l == "StateDirectory=linetokd"),
        "{unit}"
    );
    assert!(
        unit.lines().any(|l| l == "StateDirectoryMode=0700"),
        "{unit}"
    );
    assert_eq!(entry[2], "0700");
}
