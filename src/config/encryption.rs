//! `[encryption]`: the database keys that seal token values at rest.
//!
//! ```toml
//! [encryption]
//! key_files = [ { id = 1, file = "${CREDENTIALS_DIRECTORY}/db-1.key" },
//!               { id = 2, file = "${CREDENTIALS_DIRECTORY}/db-2.key" } ]
//! active = 2   # seals new writes; every listed key opens
//! ```
//!
//! Validation names every problem by its key: `active` must be one of the
//! listed IDs, IDs are unique, and each key file is checked like an
//! assertion key file (a regular file other users cannot access, at most
//! 64 KiB) and must hold 44 base64 characters (32 random bytes) with an
//! optional trailing newline. A file's contents never appear in a message.
//! The result is the [`Keyring`] the store seals and opens with.
//!
//! Depends on `store::crypt` for the key format and the keyring.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::Problem;
use super::files::read_private;
use crate::store::crypt::{KeyMaterial, Keyring};

/// `[encryption]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// Every database key, by ID.
    pub key_files: Vec<KeyFileSettings>,
    /// The ID of the key new values are sealed with.
    pub active: u32,
}

/// One `key_files` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileSettings {
    /// The key's ID, written into every value it seals.
    pub id: u32,
    /// The key file: 44 base64 characters (`linetokd keygen --db-key`).
    pub file: PathBuf,
}

/// `[encryption]`, checked, with its keys loaded.
#[derive(Debug, Clone)]
pub struct EncryptionConfig {
    /// The key files by ID, in file order (for messages and `status`).
    pub key_files: Vec<(u32, PathBuf)>,
    /// The ID new values are sealed with.
    pub active: u32,
    /// The keys.
    pub keyring: Arc<Keyring>,
}

/// Checks `[encryption]`, pushing every problem onto `problems`.
pub(super) fn validate(
    settings: &EncryptionSettings,
    problems: &mut Vec<Problem>,
) -> Option<EncryptionConfig> {
    let before = problems.len();
    if settings.key_files.is_empty() {
        problems.push(Problem::new(
            "encryption.key_files",
            "is empty: list at least the active key (`linetokd keygen --db-key --out FILE` writes one)",
        ));
    }
    let mut keys = Vec::new();
    for (i, entry) in settings.key_files.iter().enumerate() {
        let at = format!("encryption.key_files[{i}]");
        if let Some(first) = settings.key_files[..i]
            .iter()
            .position(|k| k.id == entry.id)
        {
            problems.push(Problem::new(
                format!("{at}.id"),
                format!(
                    "{} duplicates encryption.key_files[{first}].id: key IDs must be unique",
                    entry.id
                ),
            ));
        }
        match load_key(&entry.file) {
            Ok(key) => keys.push((entry.id, key)),
            Err(reason) => problems.push(Problem::new(format!("{at}.file"), reason)),
        }
    }
    if !settings.key_files.iter().any(|k| k.id == settings.active) {
        let listed: Vec<String> = settings
            .key_files
            .iter()
            .map(|k| k.id.to_string())
            .collect();
        problems.push(Problem::new(
            "encryption.active",
            format!(
                "{} is not the id of any key_files entry (listed: {})",
                settings.active,
                if listed.is_empty() {
                    "none".to_owned()
                } else {
                    listed.join(", ")
                }
            ),
        ));
    }
    if problems.len() > before {
        return None;
    }
    match Keyring::new(keys, settings.active) {
        Ok(keyring) => Some(EncryptionConfig {
            key_files: settings
                .key_files
                .iter()
                .map(|k| (k.id, k.file.clone()))
                .collect(),
            active: settings.active,
            keyring: Arc::new(keyring),
        }),
        Err(e) => {
            problems.push(Problem::new("encryption", e.to_string()));
            None
        }
    }
}

/// A database key file, read as a private file.
fn load_key(path: &std::path::Path) -> Result<KeyMaterial, String> {
    if path.as_os_str().is_empty() {
        return Err("is empty: give the path of a database key file".to_owned());
    }
    let shown = path.display().to_string();
    read_private(path)
        .and_then(|bytes| KeyMaterial::from_file_bytes(&bytes))
        .map_err(|reason| format!("{shown:?} {reason}"))
}
