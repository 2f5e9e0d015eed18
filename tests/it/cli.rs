//! Small command-line contracts that need no daemon: `assertion`, usage
//! errors and exit codes.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn linetokd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linetokd"))
}

fn example_key() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/sandbox-keys/example-private-DO-NOT-USE.pem")
}

#[test]
fn assertion_prints_a_signed_jwt_with_lines_claims() {
    let out = linetokd()
        .args([
            "assertion",
            "--channel",
            "1234567890",
            "--kid",
            "kid-x",
            "--token-exp",
            "1h",
            "--key",
        ])
        .arg(example_key())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["kid"], "kid-x");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], "1234567890");
    assert_eq!(claims["sub"], "1234567890");
    assert_eq!(claims["token_exp"], 3600);
}

#[test]
fn assertion_with_a_bad_key_or_lifetime_is_a_usage_error() {
    let garbage =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/garbage.txt");
    let out = linetokd()
        .args(["assertion", "--channel", "1", "--kid", "k", "--key"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("garbage.txt") && err.contains("neither PEM nor JSON"),
        "{err}"
    );

    let out = linetokd()
        .args([
            "assertion",
            "--channel",
            "1",
            "--kid",
            "k",
            "--token-exp",
            "31d",
            "--key",
        ])
        .arg(example_key())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("30 days"));

    // LINE's channel IDs are digits: anything else is refused, not signed.
    let out = linetokd()
        .args(["assertion", "--channel", "abc", "--kid", "k", "--key"])
        .arg(example_key())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--channel \"abc\"") && err.contains("numeric"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing signed");
}

#[test]
fn unknown_commands_and_flags_exit_2() {
    let out = linetokd().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = linetokd()
        .args(["keygen", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
