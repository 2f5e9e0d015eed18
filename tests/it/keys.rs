//! Key loading: every accepted format loads, every refused one says what the
//! file holds and what is needed (issue 2: "PEM, JWK, a 1024-bit key, an EC
//! key, garbage, an empty file: each gives its clear error").

use std::path::PathBuf;

use linetokd::line::keys::{SigningKey, VerifyingKey};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

#[test]
fn every_accepted_private_key_format_loads_the_same_key() {
    let formats = [
        "rsa2048-pkcs8.pem",
        "rsa2048-pkcs1.pem",
        "rsa2048-private.jwk",
    ];
    let jwks: Vec<_> = formats
        .iter()
        .map(|f| {
            SigningKey::from_file(&fixture(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"))
                .public_jwk()
        })
        .collect();
    assert!(jwks.windows(2).all(|w| w[0] == w[1]), "{jwks:?}");
}

#[test]
fn every_refused_private_key_names_what_it_holds() {
    // (file, substrings the error must contain)
    let table: &[(&str, &[&str])] = &[
        ("rsa1024-pkcs8.pem", &["1024-bit RSA key", "RSA-2048"]),
        ("rsa1024-private.jwk", &["1024-bit RSA key", "RSA-2048"]),
        ("rsa4096-pkcs8.pem", &["4096-bit RSA key", "RSA-2048"]),
        (
            "ec-p256-pkcs8.pem",
            &["EC private key", "RSA-2048 private key is needed"],
        ),
        (
            "ec-p256-sec1.pem",
            &["EC private key", "RSA-2048 private key is needed"],
        ),
        ("ec-p256-private.jwk", &["EC JWK", "P-256", "RSA-2048"]),
        ("ed25519.pem", &["Ed25519 private key", "RSA-2048"]),
        ("rsa2048-public.pem", &["public key, not a private key"]),
        (
            "rsa2048-public.jwk",
            &["public RSA JWK", "private key is needed"],
        ),
        ("rsa2048-inconsistent.jwk", &["components do not agree"]),
        ("garbage.txt", &["neither PEM nor JSON"]),
        ("empty.pem", &["the key is empty", "RSA-2048"]),
    ];
    for (file, needles) in table {
        let err = SigningKey::from_file(&fixture(file))
            .map(|_| ())
            .expect_err(file)
            .to_string();
        assert!(
            err.contains(file),
            "{file}: error does not name the file: {err}"
        );
        for needle in *needles {
            assert!(err.contains(needle), "{file}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn a_missing_key_file_names_the_path() {
    let err = SigningKey::from_file(&fixture("no-such-key.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-key.pem") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn public_keys_load_from_jwk_and_both_pem_forms() {
    for file in [
        "rsa2048-public.jwk",
        "rsa2048-public.pem",
        "rsa2048-public-pkcs1.pem",
        "rsa2048-pkcs8.pem",
    ] {
        let key = VerifyingKey::from_file(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(key.modulus_bits(), 2048, "{file}");
    }
    let err = VerifyingKey::from_file(&fixture("garbage.txt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither PEM nor JSON"), "{err}");
}
