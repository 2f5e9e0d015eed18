//! The sealed-value format of encryption at rest: pure sealing and opening
//! of one stored value, and the keyring that does it.
//!
//! A sealed value (a BLOB in the database) is
//!
//! ```text
//! 0x01 version ‖ 0x01 algorithm (AES-256-GCM) ‖ key ID (u32, big-endian)
//!   ‖ 12-byte nonce ‖ ciphertext ‖ 16-byte tag
//! ```
//!
//! sealed with aws-lc-rs's [`RandomizedNonceKey`], which draws the nonce
//! itself, so no caller can ever reuse one. The additional data binds the
//! value to where it is stored:
//!
//! ```text
//! "linetokd/v1/" ‖ table ‖ 0x00 ‖ channel ‖ 0x00 ‖ group ‖ 0x00 ‖ row key ‖ 0x00 ‖ key ID (u32, big-endian)
//! ```
//!
//! # Invariants
//!
//! - A value copied to another row, group, channel or table, or relabelled
//!   with another key ID, fails to open ([`CryptError::Tampered`]); so does
//!   one flipped bit anywhere.
//! - Key bytes never leave this module: [`KeyMaterial`] and [`Keyring`]
//!   print as placeholders, and no error carries a key or a plaintext.
//! - `algorithm` 0x02 is reserved for AES-256-GCM-SIV; only 0x01 is written
//!   or read today.
//!
//! Pure: depends on aws-lc-rs and base64 only; no IO, no clock. The store
//! (`store::values`) decides which rows are sealed and counts
//! encryptions per key; `config` reads key files through
//! [`KeyMaterial::from_file_bytes`].

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Bytes in a database key.
pub const KEY_LEN: usize = 32;
/// Characters in a key file's base64 text (without the newline).
pub const KEY_FILE_CHARS: usize = 44;
/// The format version written.
const VERSION: u8 = 1;
/// AES-256-GCM.
const ALG_AES_256_GCM: u8 = 1;
/// Version, algorithm, key ID, nonce.
const HEADER_LEN: usize = 1 + 1 + 4 + NONCE_LEN;
/// GCM's tag.
const TAG_LEN: usize = 16;
/// The most values one key may seal. NIST SP 800-38D bounds random 96-bit
/// nonces at 2^32 invocations per key; half of that leaves a wide margin
/// (linetokd writes a few thousand values a month).
pub const MAX_ENCRYPTIONS_PER_KEY: u64 = 1 << 31;
/// The prefix of every additional data.
const AAD_PREFIX: &[u8] = b"linetokd/v1/";

/// 32 secret key bytes, read from a key file. Prints as a placeholder.
pub struct KeyMaterial([u8; KEY_LEN]);

impl KeyMaterial {
    /// A key file's bytes: 44 base64 characters (32 bytes), optionally
    /// followed by one newline. The reason names what is wrong and never
    /// quotes the contents.
    ///
    /// # Errors
    ///
    /// A reason to follow the file's name.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, String> {
        let text = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        let expected = "a database key file holds 44 base64 characters (32 random bytes), \
                        as `linetokd keygen --db-key` writes";
        if text.len() != KEY_FILE_CHARS {
            return Err(format!("holds {} characters; {expected}", text.len()));
        }
        let decoded = STANDARD
            .decode(text)
            .map_err(|_| format!("is not base64; {expected}"))?;
        let key: [u8; KEY_LEN] = decoded
            .try_into()
            .map_err(|_| format!("does not decode to 32 bytes; {expected}"))?;
        Ok(Self(key))
    }

    /// A fresh random key.
    ///
    /// # Errors
    ///
    /// [`CryptError::Random`] when the system's random generator fails.
    pub fn generate() -> Result<Self, CryptError> {
        let mut key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| CryptError::Random)?;
        Ok(Self(key))
    }

    /// The key as a key file holds it: base64 and a newline.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(..)")
    }
}

/// Where a value is stored: what the additional data binds it to.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The table, e.g. `tokens`.
    pub table: &'a str,
    /// The channel ID.
    pub channel: &'a str,
    /// The group name.
    pub group: &'a str,
    /// The row's own key: the token's LINE key ID.
    pub row: &'a str,
}

impl Place<'_> {
    fn aad(&self, key_id: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            AAD_PREFIX.len()
                + self.table.len()
                + self.channel.len()
                + self.group.len()
                + self.row.len()
                + 8,
        );
        aad.extend_from_slice(AAD_PREFIX);
        for part in [self.table, self.channel, self.group, self.row] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad.extend_from_slice(&key_id.to_be_bytes());
        aad
    }
}

/// Every configured database key by ID; the active one seals, every one
/// opens. Prints its key IDs only.
pub struct Keyring {
    keys: BTreeMap<u32, RandomizedNonceKey>,
    active: u32,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl Keyring {
    /// A keyring of `keys`, sealing with `active`.
    ///
    /// # Errors
    ///
    /// [`CryptError::DuplicateKey`], [`CryptError::ActiveMissing`].
    pub fn new(
        keys: impl IntoIterator<Item = (u32, KeyMaterial)>,
        active: u32,
    ) -> Result<Self, CryptError> {
        let mut ring = BTreeMap::new();
        for (id, material) in keys {
            let key = RandomizedNonceKey::new(&AES_256_GCM, &material.0)
                .map_err(|_| CryptError::BadKey(id))?;
            if ring.insert(id, key).is_some() {
                return Err(CryptError::DuplicateKey(id));
            }
        }
        if !ring.contains_key(&active) {
            return Err(CryptError::ActiveMissing(active));
        }
        Ok(Self { keys: ring, active })
    }

    /// The key ID new values are sealed with.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Whether the keyring holds key `id`.
    pub fn contains(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    /// Every key ID, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Seals `plaintext` for `place` under the active key.
    ///
    /// # Errors
    ///
    /// [`CryptError::Random`] when no nonce could be drawn.
    pub fn seal(&self, place: &Place<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
        let id = self.active;
        let key = self.keys.get(&id).ok_or(CryptError::UnknownKey(id))?;
        let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
        body.extend_from_slice(plaintext);
        let nonce = key
            .seal_in_place_append_tag(Aad::from(place.aad(id)), &mut body)
            .map_err(|_| CryptError::Random)?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + body.len());
        sealed.push(VERSION);
        sealed.push(ALG_AES_256_GCM);
        sealed.extend_from_slice(&id.to_be_bytes());
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// Opens a value sealed for `place`.
    ///
    /// # Errors
    ///
    /// [`CryptError::TooShort`], [`CryptError::Version`],
    /// [`CryptError::Algorithm`], [`CryptError::UnknownKey`],
    /// [`CryptError::Tampered`].
    pub fn open(&self, place: &Place<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        let id = key_id_of(sealed)?;
        let key = self.keys.get(&id).ok_or(CryptError::UnknownKey(id))?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[6..HEADER_LEN])
            .map_err(|_| CryptError::Tampered(id))?;
        let mut body = sealed[HEADER_LEN..].to_vec();
        let opened = key
            .open_in_place(nonce, Aad::from(place.aad(id)), &mut body)
            .map_err(|_| CryptError::Tampered(id))?;
        let len = opened.len();
        body.truncate(len);
        Ok(body)
    }
}

/// The key ID a sealed value names in its header, after checking the
/// header's version, algorithm and the value's length.
///
/// # Errors
///
/// [`CryptError::TooShort`], [`CryptError::Version`],
/// [`CryptError::Algorithm`].
pub fn key_id_of(sealed: &[u8]) -> Result<u32, CryptError> {
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(CryptError::TooShort { len: sealed.len() });
    }
    if sealed[0] != VERSION {
        return Err(CryptError::Version(sealed[0]));
    }
    if sealed[1] != ALG_AES_256_GCM {
        return Err(CryptError::Algorithm(sealed[1]));
    }
    Ok(u32::from_be_bytes([
        sealed[2], sealed[3], sealed[4], sealed[5],
    ]))
}

/// Why a value could not be sealed or opened, or a keyring built. Never
/// carries key bytes or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    /// Shorter than a header and a tag: truncated.
    #[error("the sealed value is {len} bytes long, shorter than any sealed value ({} bytes)", HEADER_LEN + TAG_LEN)]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// A format version this linetokd does not know.
    #[error("the sealed value has format version {0}; this linetokd reads version 1")]
    Version(u8),
    /// An algorithm this linetokd does not know.
    #[error("the sealed value names algorithm {0}; this linetokd reads 1 (AES-256-GCM)")]
    Algorithm(u8),
    /// Sealed under a key the keyring lacks.
    #[error("the value is sealed under database key {0}, which is not in [encryption] key_files")]
    UnknownKey(u32),
    /// The tag did not verify: altered, moved from another row, or sealed
    /// under another key that carries this ID.
    #[error(
        "the value does not open under database key {0}: it was altered, moved from another row, \
         or sealed with a different key of that ID"
    )]
    Tampered(u32),
    /// Two keys with one ID.
    #[error("database key ID {0} is listed twice")]
    DuplicateKey(u32),
    /// The active key is not in the keyring.
    #[error("the active database key {0} is not among the key files")]
    ActiveMissing(u32),
    /// aws-lc-rs refused the key bytes.
    #[error("database key {0} is not a usable AES-256 key")]
    BadKey(u32),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(byte: u8) -> KeyMaterial {
        KeyMaterial([byte; KEY_LEN])
    }

    fn place<'a>(row: &'a str) -> Place<'a> {
        Place {
            table: "tokens",
            channel: "1234567890",
            group: "web",
            row,
        }
    }

    #[test]
    fn a_value_opens_where_it_was_sealed_and_nowhere_else() {
        let ring = Keyring::new([(1, material(1)), (2, material(2))], 2).unwrap();
        let sealed = ring.seal(&place("kid-a"), b"token-value").unwrap();
        assert_eq!(key_id_of(&sealed).unwrap(), 2);
        assert_eq!(sealed.len(), HEADER_LEN + 11 + TAG_LEN);
        assert_eq!(ring.open(&place("kid-a"), &sealed).unwrap(), b"token-value");
        assert_eq!(
            ring.open(&place("kid-b"), &sealed),
            Err(CryptError::Tampered(2))
        );
        let other_group = Place {
            group: "api",
            ..place("kid-a")
        };
        assert_eq!(
            ring.open(&other_group, &sealed),
            Err(CryptError::Tampered(2))
        );
        // Relabelled with the other key's ID: the AAD binds the ID.
        let mut relabelled = sealed.clone();
        relabelled[5] = 1;
        assert_eq!(
            ring.open(&place("kid-a"), &relabelled),
            Err(CryptError::Tampered(1))
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let ring = Keyring::new([(7, material(7))], 7).unwrap();
        let sealed = ring.seal(&place("k"), b"secret").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(ring.open(&place("k"), &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn nonces_differ_between_seals() {
        let ring = Keyring::new([(1, material(1))], 1).unwrap();
        let a = ring.seal(&place("k"), b"same").unwrap();
        let b = ring.seal(&place("k"), b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn keyrings_refuse_duplicates_and_a_missing_active_key() {
        assert_eq!(
            Keyring::new([(1, material(1)), (1, material(2))], 1).unwrap_err(),
            CryptError::DuplicateKey(1)
        );
        assert_eq!(
            Keyring::new([(1, material(1))], 2).unwrap_err(),
            CryptError::ActiveMissing(2)
        );
        let ring = Keyring::new([(1, material(1))], 1).unwrap();
        let other = Keyring::new([(3, material(3))], 3).unwrap();
        let sealed = other.seal(&place("k"), b"x").unwrap();
        assert_eq!(
            ring.open(&place("k"), &sealed),
            Err(CryptError::UnknownKey(3))
        );
        assert!(!format!("{ring:?}").contains("1, 1, 1"));
    }

    #[test]
    fn key_files_are_44_base64_characters() {
        let generated = KeyMaterial::generate().unwrap();
        let text = generated.to_file_text();
        assert_eq!(text.len(), KEY_FILE_CHARS + 1);
        let read = KeyMaterial::from_file_bytes(text.as_bytes()).unwrap();
        assert_eq!(read.0, generated.0);
        assert!(KeyMaterial::from_file_bytes(text.trim_end().as_bytes()).is_ok());
        let short = KeyMaterial::from_file_bytes(b"AAAA\n").unwrap_err();
        assert!(short.contains("holds 4 characters"), "{short}");
        let bad = KeyMaterial::from_file_bytes(&[b'!'; 44]).unwrap_err();
        assert!(bad.contains("not base64"), "{bad}");
        assert_eq!(format!("{generated:?}"), "KeyMaterial(..)");
    }
}
