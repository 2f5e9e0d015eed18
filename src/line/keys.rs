//! Assertion signing keys: the RSA-2048 pair whose public half is registered
//! in the LINE Developers Console.
//!
//! LINE accepts only RSA-2048 keys used with RS256 (docs/line-api.md §8). Keys
//! arrive in whatever format the operator's tooling produced: a PKCS#8
//! (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM, or a private JWK as
//! LINE's own documentation generates. Every format is normalised through
//! aws-lc-rs, which both validates the key (consistent CRT parameters, size)
//! and re-encodes it as PKCS#8 for `jsonwebtoken`. Anything else is refused
//! with an error that says what the file holds and what is needed, because
//! "invalid key" helps nobody at 3 a.m.
//!
//! [`VerifyingKey`] is the other side, for the sandbox: a public key as a JWK
//! (what `linetokd keygen` writes and the console takes) or a PEM.
//!
//! Depends on aws-lc-rs (the project's one crypto backend), `jsonwebtoken`,
//! `pem` and `pkcs8` (to name the algorithm of a refused PKCS#8 key).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeyPairComponents, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

/// The only modulus size LINE accepts for assertion signing keys.
pub const REQUIRED_BITS: usize = 2048;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("the key is empty: expected an RSA-2048 private key as PEM or JWK")]
    Empty,
    /// Neither PEM nor JSON.
    #[error(
        "the key is neither PEM nor JSON (JWK): expected an RSA-2048 private key as PEM (\"-----BEGIN PRIVATE KEY-----\") or a private JWK"
    )]
    UnknownFormat,
    /// A recognised format holding the wrong kind of key.
    #[error("the key holds {found}; {needed}")]
    WrongKind {
        /// What the file holds, e.g. "an EC private key".
        found: String,
        /// What is needed instead.
        needed: &'static str,
    },
    /// An RSA key of the wrong size.
    #[error("the key is a {bits}-bit RSA key; LINE needs an RSA-2048 key")]
    WrongSize {
        /// The modulus size found.
        bits: usize,
    },
    /// The structure is recognised but its contents are broken.
    #[error("the key is malformed: {0}")]
    Malformed(String),
    /// Key generation failed in the crypto library.
    #[error("RSA key generation failed")]
    Generate,
    /// Signing failed in the crypto library.
    #[error("RSA signing failed")]
    Sign,
    /// Any of the above, in a named file.
    ///
    /// The inner error is part of the message rather than a `source`, so
    /// an error chain printed with `{:#}` names the problem once.
    #[error("{path}: {problem}")]
    InFile {
        /// The key file.
        path: String,
        /// What is wrong with it.
        problem: Box<KeyError>,
    },
}

impl KeyError {
    /// Attaches the file path to a parse error so the message names the file.
    fn in_file(self, path: &Path) -> KeyError {
        KeyError::InFile {
            path: path.display().to_string(),
            problem: Box::new(self),
        }
    }
}

const NEED_PRIVATE: &str = "an RSA-2048 private key is needed (PEM or private JWK)";
const NEED_PUBLIC: &str = "an RSA-2048 public key is needed (JWK or PEM)";

/// An RSA-2048 private key ready to sign RS256 assertions.
///
/// Kept as its PKCS#8 DER between uses, parsed when it signs and held
/// parsed until [`SigningKey::release`]. Why: a parsed key in aws-lc, with
/// the Montgomery contexts and blinding its first signature builds, is
/// about 5.4 KB against the DER's 1.2 KB, and a channel signs in bursts
/// (its key-ID listing, then its groups' issues) an hour or more apart.
/// At 15 groups a channel (heaptrack, 10,000 groups), every channel's key
/// held parsed was about 365 bytes of every group's memory; as DER with
/// its public half, about 100. The rotator releases a channel's key when
/// the channel's work ends, so one parse serves the whole burst.
///
/// `Debug` prints only the public modulus fingerprint: the private key never
/// reaches a log.
pub struct SigningKey {
    /// PKCS#8 DER of a key aws-lc accepted: parsing it again cannot fail
    /// short of a crypto library fault. Zeroed when dropped.
    der: Vec<u8>,
    /// The public modulus and exponent, for the JWK and `Debug` without a
    /// parse.
    public: (Vec<u8>, Vec<u8>),
    /// The parsed pair while the key is in use. An `Arc`, so a signature in
    /// progress keeps its pair when another task releases the key.
    parsed: Mutex<Option<Arc<KeyPair>>>,
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.der.fill(0);
        // Keeps the zeroing from being elided as a store before a free.
        std::hint::black_box(&mut self.der);
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey(RSA-{} {})",
            self.bits(),
            self.public_jwk().thumb()
        )
    }
}

impl SigningKey {
    /// Loads a private key file (PEM or private JWK).
    ///
    /// # Errors
    /// [`KeyError`] naming the file and what it holds when it cannot be
    /// read or is not an RSA-2048 private key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        parse_file(path, Self::parse)
    }

    /// Parses a private key from PEM (PKCS#8 or PKCS#1) or a private JWK.
    ///
    /// # Errors
    /// [`KeyError`] saying what the bytes hold when they are not an RSA-2048
    /// private key.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let pair = match sniff(bytes)? {
            Format::Pem => pair_from_pem(bytes)?,
            Format::Json => pair_from_jwk(bytes)?,
        };
        Self::from_pair(&pair)
    }

    /// Keeps `pair` as DER (the parsed pair is dropped: see the type's
    /// doc).
    fn from_pair(pair: &KeyPair) -> Result<Self, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        if bits != REQUIRED_BITS {
            return Err(KeyError::WrongSize { bits });
        }
        let der = pair
            .as_der()
            .map_err(|_| KeyError::Malformed("cannot encode the key as PKCS#8".into()))?
            .as_ref()
            .to_vec();
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        Ok(Self {
            der,
            public: (components.n, components.e),
            parsed: Mutex::new(None),
        })
    }

    /// The modulus size in bits (always 2048 for a loaded key).
    pub fn bits(&self) -> usize {
        strip_leading_zeros(&self.public.0).len() * 8
    }

    /// The parsed pair: the held one, or the DER parsed and held. Parsed
    /// outside the lock (it checks the key's consistency, a fraction of a
    /// signature): a concurrent signer waits for no parse but its own.
    fn pair(&self) -> Result<Arc<KeyPair>, KeyError> {
        let held = || self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pair) = held().as_ref() {
            return Ok(Arc::clone(pair));
        }
        let pair =
            Arc::new(KeyPair::from_pkcs8(&self.der).map_err(|e| {
                KeyError::Malformed(format!("the loaded key no longer parses ({e})"))
            })?);
        Ok(Arc::clone(held().get_or_insert(pair)))
    }

    /// Drops the parsed pair (the DER stays): the holder is done signing
    /// for now. The next signature parses the key again.
    pub fn release(&self) {
        self.parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Whether the key is held parsed (for tests of who releases it).
    pub fn is_parsed(&self) -> bool {
        self.parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The key for `jsonwebtoken`, built on demand (tests sign odd JWTs
    /// with it). Not kept: the daemon signs with [`Self::sign_rs256`], and
    /// a second copy of every channel's key would cost memory for nothing.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] if the key cannot be encoded.
    pub fn encoding_key(&self) -> Result<EncodingKey, KeyError> {
        let pem = self.to_pkcs8_pem()?;
        EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| KeyError::Malformed(format!("jsonwebtoken refused the key: {e}")))
    }

    /// The RS256 signature (RSASSA-PKCS1-v1_5 with SHA-256) of `message`,
    /// made with the held parsed key (parsed now if released).
    /// `jsonwebtoken` would parse and consistency-check the whole private
    /// key again for every signature, tripling the cost of each assertion.
    ///
    /// # Errors
    /// [`KeyError::Sign`] if the crypto library fails;
    /// [`KeyError::Malformed`] if the kept DER no longer parses (a crypto
    /// library fault: aws-lc wrote it from a key it had accepted).
    pub fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let pair = self.pair()?;
        let mut signature = vec![0; pair.public_modulus_len()];
        // PKCS#1 v1.5 padding is deterministic: the generator goes unused.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        pair.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &rng,
            message,
            &mut signature,
        )
        .map_err(|_| KeyError::Sign)?;
        Ok(signature)
    }

    /// The PKCS#8 PEM of the private key, as `keygen` writes it.
    ///
    /// # Errors
    /// None any more (the DER is kept); the signature stays for callers.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", self.der.clone())))
    }

    /// The public half as the JWK the LINE Developers Console takes.
    pub fn public_jwk(&self) -> PublicJwk {
        PublicJwk::rs256(&self.public.0, &self.public.1)
    }
}

/// Generates a fresh RSA-2048 signing key.
///
/// # Errors
/// [`KeyError::Generate`] if the crypto library fails.
pub fn generate() -> Result<SigningKey, KeyError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
    SigningKey::from_pair(&pair)
}

/// A public key in the JWK form LINE's console registers: `kty` RSA, `alg`
/// RS256, `use` sig, `n`, `e`, and deliberately no `kid` (LINE assigns it and
/// refuses a JWK that carries one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// Always `RSA`.
    pub kty: String,
    /// Always `RS256`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// The modulus, base64url without padding.
    pub n: String,
    /// The public exponent, base64url without padding.
    pub e: String,
}

impl PublicJwk {
    fn rs256(n: &[u8], e: &[u8]) -> Self {
        Self {
            kty: "RSA".into(),
            alg: "RS256".into(),
            use_: "sig".into(),
            n: URL_SAFE_NO_PAD.encode(n),
            e: URL_SAFE_NO_PAD.encode(e),
        }
    }

    /// A short tag of the modulus, to tell keys apart in messages.
    fn thumb(&self) -> String {
        let tail: String = self.n.chars().rev().take(8).collect();
        format!("n=…{}", tail.chars().rev().collect::<String>())
    }

    /// The JWK as pretty JSON, ready to paste into the console.
    pub fn to_json_pretty(&self) -> String {
        // Serialising a struct of strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// An RSA public key that verifies RS256 assertions (the sandbox's side).
#[derive(Clone)]
pub struct VerifyingKey {
    decoding: DecodingKey,
    bits: usize,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey(RSA-{})", self.bits)
    }
}

impl VerifyingKey {
    /// Loads a public key file (JWK or PEM).
    ///
    /// # Errors
    /// [`KeyError`] naming the file when it cannot be read or is not an
    /// RSA public key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        parse_file(path, Self::parse)
    }

    /// Parses a public key: a JWK with `kty` RSA, or a PEM `PUBLIC KEY`
    /// (SPKI) or `RSA PUBLIC KEY` (PKCS#1). A private key in any accepted
    /// format also works: its public half is used.
    ///
    /// # Errors
    /// [`KeyError`] saying what the bytes hold when they are not an RSA key.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let (n, e) = match sniff(bytes)? {
            Format::Json => public_components_from_jwk(bytes)?,
            Format::Pem => public_components_from_pem(bytes)?,
        };
        let n = strip_leading_zeros(&n);
        if n.is_empty() {
            return Err(KeyError::Malformed("the RSA modulus is empty".into()));
        }
        let bits = n.len() * 8;
        Ok(Self {
            decoding: DecodingKey::from_rsa_raw_components(n, &e),
            bits,
        })
    }

    /// The key `jsonwebtoken` verifies with.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The modulus size in bits.
    pub fn modulus_bits(&self) -> usize {
        self.bits
    }
}

/// The largest key file read: an RSA-4096 private JWK is under 4 KiB, so a
/// bigger file is a wrong path (a log, a disk image), refused before it is
/// read whole.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads `path` (at most [`MAX_KEY_FILE`]) and parses it with `parse`,
/// naming the file in any error.
fn parse_file<T>(path: &Path, parse: fn(&[u8]) -> Result<T, KeyError>) -> Result<T, KeyError> {
    use std::io::Read as _;
    let read_err = |source| KeyError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "it is larger than {} KiB, the most a key file may be",
                MAX_KEY_FILE / 1024
            ),
        )));
    }
    parse(&bytes).map_err(|e| e.in_file(path))
}

enum Format {
    Pem,
    Json,
}

fn sniff(bytes: &[u8]) -> Result<Format, KeyError> {
    let text = std::str::from_utf8(bytes).map_err(|_| KeyError::UnknownFormat)?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        Err(KeyError::Empty)
    } else if trimmed.starts_with("-----BEGIN") {
        Ok(Format::Pem)
    } else if trimmed.starts_with('{') {
        Ok(Format::Json)
    } else {
        Err(KeyError::UnknownFormat)
    }
}

fn parse_pem(bytes: &[u8]) -> Result<pem::Pem, KeyError> {
    pem::parse(bytes).map_err(|e| KeyError::Malformed(format!("bad PEM: {e}")))
}

fn pair_from_pem(bytes: &[u8]) -> Result<KeyPair, KeyError> {
    let block = parse_pem(bytes)?;
    let der = block.contents();
    match block.tag() {
        "PRIVATE KEY" => {
            let algorithm = pkcs8_algorithm(der)?;
            if algorithm != Algorithm::Rsa {
                return Err(KeyError::WrongKind {
                    found: format!("{} (PKCS#8)", algorithm.describe_private()),
                    needed: NEED_PRIVATE,
                });
            }
            KeyPair::from_pkcs8(der).map_err(|e| rsa_rejected(&e, der))
        }
        "RSA PRIVATE KEY" => KeyPair::from_der(der).map_err(|e| rsa_rejected(&e, der)),
        tag => Err(KeyError::WrongKind {
            found: describe_pem_tag(tag),
            needed: NEED_PRIVATE,
        }),
    }
}

/// aws-lc-rs refuses RSA keys under 2048 bits with a generic "too small";
/// turn that into the size the operator needs to see.
fn rsa_rejected(e: &aws_lc_rs::error::KeyRejected, der: &[u8]) -> KeyError {
    match rsa_bits_of_der(der) {
        Some(bits) if bits != REQUIRED_BITS => KeyError::WrongSize { bits },
        _ => KeyError::Malformed(format!("not a valid RSA private key ({e})")),
    }
}

/// Reads the modulus size out of a PKCS#1 or PKCS#8 RSA private key without
/// validating it, for the error message of a key aws-lc-rs refused.
fn rsa_bits_of_der(der: &[u8]) -> Option<usize> {
    use pkcs8::der::Decode;
    let pkcs1 = match pkcs8::PrivateKeyInfoRef::from_der(der) {
        Ok(info) => info.private_key.as_bytes().to_vec(),
        Err(_) => der.to_vec(),
    };
    let key = pkcs1::RsaPrivateKeyRef::from_der(&pkcs1).ok()?;
    Some(strip_leading_zeros(key.modulus.as_bytes()).len() * 8)
}

fn describe_pem_tag(tag: &str) -> String {
    match tag {
        "EC PRIVATE KEY" => "an EC private key".into(),
        "ENCRYPTED PRIVATE KEY" => {
            "an encrypted private key (decrypt it first, e.g. `openssl pkey -in KEY -out PLAIN`)"
                .into()
        }
        "PUBLIC KEY" | "RSA PUBLIC KEY" => "a public key, not a private key".into(),
        "CERTIFICATE" => "a certificate, not a private key".into(),
        "OPENSSH PRIVATE KEY" => {
            "an OpenSSH private key (convert it with `ssh-keygen -p -m PKCS8 -f KEY`)".into()
        }
        other => format!("a PEM block of type \"{other}\""),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Algorithm {
    Rsa,
    Ec,
    Ed25519,
    Other(String),
}

impl Algorithm {
    fn describe_private(&self) -> String {
        match self {
            Self::Rsa => "an RSA private key".into(),
            Self::Ec => "an EC private key".into(),
            Self::Ed25519 => "an Ed25519 private key".into(),
            Self::Other(oid) => format!("a private key of algorithm {oid}"),
        }
    }
}

fn pkcs8_algorithm(der: &[u8]) -> Result<Algorithm, KeyError> {
    use pkcs8::der::Decode;
    let info = pkcs8::PrivateKeyInfoRef::from_der(der)
        .map_err(|e| KeyError::Malformed(format!("bad PKCS#8 structure: {e}")))?;
    Ok(match info.algorithm.oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => Algorithm::Rsa,
        "1.2.840.10045.2.1" => Algorithm::Ec,
        "1.3.101.112" => Algorithm::Ed25519,
        other => Algorithm::Other(other.to_owned()),
    })
}

fn public_components_from_pem(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    let block = parse_pem(bytes)?;
    match block.tag() {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {
            let key = aws_lc_rs::rsa::PublicKey::from_der(block.contents()).map_err(|_| {
                KeyError::WrongKind {
                    found: "a public key that is not RSA".into(),
                    needed: NEED_PUBLIC,
                }
            })?;
            let c = PublicKeyComponents::<Vec<u8>>::from(&key);
            Ok((c.n, c.e))
        }
        "PRIVATE KEY" | "RSA PRIVATE KEY" => {
            let pair = pair_from_pem(bytes)?;
            let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            Ok((c.n, c.e))
        }
        tag => Err(KeyError::WrongKind {
            found: describe_pem_tag(tag),
            needed: NEED_PUBLIC,
        }),
    }
}

/// The members of a JWK this module reads; RFC 7517/7518 names.
#[derive(Deserialize)]
struct JwkFields {
    kty: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<String>,
    p: Option<String>,
    q: Option<String>,
    dp: Option<String>,
    dq: Option<String>,
    qi: Option<String>,
}

fn parse_jwk(bytes: &[u8]) -> Result<JwkFields, KeyError> {
    let jwk: JwkFields = serde_json::from_slice(bytes)
        .map_err(|e| KeyError::Malformed(format!("bad JWK JSON: {e}")))?;
    match jwk.kty.as_deref() {
        Some("RSA") => Ok(jwk),
        Some("EC") => Err(KeyError::WrongKind {
            found: format!(
                "an EC JWK (curve {})",
                jwk.crv.as_deref().unwrap_or("unknown")
            ),
            needed: NEED_PRIVATE,
        }),
        Some(other) => Err(KeyError::WrongKind {
            found: format!("a JWK of kty \"{other}\""),
            needed: NEED_PRIVATE,
        }),
        None => Err(KeyError::Malformed(
            "the JWK has no \"kty\" member (expected \"RSA\")".into(),
        )),
    }
}

fn b64_member(name: &str, value: Option<&String>) -> Result<Vec<u8>, KeyError> {
    let value =
        value.ok_or_else(|| KeyError::Malformed(format!("the JWK has no \"{name}\" member")))?;
    // JWKs are base64url without padding; tolerate padding some tools add.
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| KeyError::Malformed(format!("JWK member \"{name}\" is not base64url: {e}")))
}

fn pair_from_jwk(bytes: &[u8]) -> Result<KeyPair, KeyError> {
    let jwk = parse_jwk(bytes)?;
    if jwk.d.is_none() {
        return Err(KeyError::WrongKind {
            found: "a public RSA JWK (no \"d\" member)".into(),
            needed: NEED_PRIVATE,
        });
    }
    let n = b64_member("n", jwk.n.as_ref())?;
    let bits = strip_leading_zeros(&n).len() * 8;
    if bits != REQUIRED_BITS {
        return Err(KeyError::WrongSize { bits });
    }
    let components = KeyPairComponents {
        public_key: PublicKeyComponents {
            n,
            e: b64_member("e", jwk.e.as_ref())?,
        },
        d: b64_member("d", jwk.d.as_ref())?,
        p: b64_member("p", jwk.p.as_ref())?,
        q: b64_member("q", jwk.q.as_ref())?,
        dP: b64_member("dp", jwk.dp.as_ref())?,
        dQ: b64_member("dq", jwk.dq.as_ref())?,
        qInv: b64_member("qi", jwk.qi.as_ref())?,
    };
    KeyPair::from_components(&components)
        .map_err(|e| KeyError::Malformed(format!("the JWK's RSA components do not agree ({e})")))
}

fn public_components_from_jwk(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    let jwk = parse_jwk(bytes)?;
    Ok((
        b64_member("n", jwk.n.as_ref())?,
        b64_member("e", jwk.e.as_ref())?,
    ))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_file_that_is_not_a_key_file_is_refused_before_it_is_read_whole() {
        let err = SigningKey::from_file(Path::new("/dev/zero"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("larger than 64 KiB"), "{err}");
    }

    use super::*;

    #[test]
    fn generated_key_round_trips_through_pkcs8_pem() {
        let key = generate().unwrap();
        assert_eq!(key.bits(), 2048);
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::parse(pem.as_bytes()).unwrap();
        assert_eq!(again.public_jwk(), key.public_jwk());
    }

    #[test]
    fn a_released_key_signs_the_same_after_parsing_again() {
        let key = generate().unwrap();
        assert!(
            !key.is_parsed(),
            "a loaded key is kept as DER until it signs"
        );
        let first = key.sign_rs256(b"header.claims").unwrap();
        assert!(key.is_parsed(), "a signing key stays parsed for its burst");
        key.release();
        assert!(!key.is_parsed());
        // RS256 (PKCS#1 v1.5) is deterministic: the same key, parsed again
        // from the kept DER, makes the same signature.
        assert_eq!(key.sign_rs256(b"header.claims").unwrap(), first);
        let jwk = key.public_jwk();
        let n = URL_SAFE_NO_PAD.decode(&jwk.n).unwrap();
        let e = URL_SAFE_NO_PAD.decode(&jwk.e).unwrap();
        aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
            .verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                b"header.claims",
                &first,
            )
            .expect("the public half verifies the signature");
    }

    #[test]
    fn public_jwk_has_what_the_console_needs_and_no_kid() {
        let jwk = generate().unwrap().public_jwk();
        let v: serde_json::Value = serde_json::from_str(&jwk.to_json_pretty()).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["alg", "e", "kty", "n", "use"]);
        assert_eq!(obj["alg"], "RS256");
        assert_eq!(obj["use"], "sig");
        assert_eq!(obj["e"], "AQAB");
        let verifying = VerifyingKey::parse(jwk.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(verifying.modulus_bits(), 2048);
    }

    #[test]
    fn empty_and_garbage_are_named() {
        assert!(matches!(SigningKey::parse(b""), Err(KeyError::Empty)));
        assert!(matches!(SigningKey::parse(b"  \n"), Err(KeyError::Empty)));
        assert!(matches!(
            SigningKey::parse(b"hello world"),
            Err(KeyError::UnknownFormat)
        ));
        assert!(matches!(
            SigningKey::parse(&[0xff, 0xfe, 0x00]),
            Err(KeyError::UnknownFormat)
        ));
    }

    #[test]
    fn public_key_is_not_a_signing_key() {
        let jwk = generate().unwrap().public_jwk().to_json_pretty();
        let err = SigningKey::parse(jwk.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("public RSA JWK"), "{err}");
    }
}
