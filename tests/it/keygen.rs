//! `linetokd keygen`: the pair it writes, the modes, and that it never
//! overwrites a key.

use std::os::unix::fs::PermissionsExt as _;

use linetokd::keygen::{KeygenError, next_steps, write_key_pair};
use linetokd::line::keys::{SigningKey, VerifyingKey};

#[test]
fn writes_a_loadable_private_key_0600_and_a_console_ready_public_jwk() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let generated = write_key_pair(&out, "shop-bot").unwrap();

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&generated.private_key), 0o600);
    assert_eq!(mode(&out), 0o700);

    let key = SigningKey::from_file(&generated.private_key).unwrap();
    let public = VerifyingKey::from_file(&generated.public_jwk).unwrap();
    assert_eq!(public.modulus_bits(), 2048);

    let jwk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&generated.public_jwk).unwrap()).unwrap();
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert!(
        jwk.get("kid").is_none(),
        "the console refuses a JWK with a kid"
    );
    assert_eq!(jwk["n"], key.public_jwk().n);

    let steps = next_steps(&generated);
    assert!(
        steps.contains("Register a public key") && steps.contains("kid"),
        "{steps}"
    );
}

#[test]
fn never_overwrites_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_key_pair(dir.path(), "k").unwrap();
    let before = std::fs::read(&first.private_key).unwrap();
    let err = write_key_pair(dir.path(), "k").unwrap_err();
    assert!(matches!(err, KeygenError::Exists(_)), "{err}");
    assert!(err.to_string().contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read(&first.private_key).unwrap(), before);

    // Only the public file existing is refused too: the pair stays a pair.
    std::fs::remove_file(&first.private_key).unwrap();
    assert!(matches!(
        write_key_pair(dir.path(), "k"),
        Err(KeygenError::Exists(_))
    ));
}
