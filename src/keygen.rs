//! `linetokd keygen`: a fresh assertion signing key pair, written where the
//! operator asked, ready for the LINE Developers Console.
//!
//! The private key is written as PKCS#8 PEM with mode 0600 and never over an
//! existing file: overwriting the key a channel is registered with would
//! lock the daemon out of that channel. The public half is the JWK the
//! console takes (`kty`, `alg` RS256, `use` sig, `n`, `e`, no `kid`); the
//! sandbox registers the same file as is.
//!
//! `linetokd keygen --db-key --out FILE` writes a database key for
//! `[encryption]` instead: 32 random bytes as base64 and a newline, mode
//! 0600, never over an existing file (losing a database key loses every
//! value sealed with it).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::line::keys::{self, KeyError};

/// Why keygen failed.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// A file it would write already exists.
    #[error("{0} already exists; keygen never overwrites a key (choose another --out)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The random generator failed for a database key.
    #[error("cannot generate a database key: {0}")]
    DbKey(#[from] crate::store::crypt::CryptError),
}

/// Writes a fresh database key (`[encryption] key_files`) to `path`:
/// 44 base64 characters and a newline, mode 0600. The parent directory
/// must exist.
///
/// # Errors
/// [`KeygenError::Exists`] if `path` exists; [`KeygenError::Write`] on IO
/// failure; [`KeygenError::DbKey`] when no random key could be drawn.
pub fn write_db_key(path: &Path) -> Result<(), KeygenError> {
    if path.exists() {
        return Err(KeygenError::Exists(path.to_owned()));
    }
    let key = crate::store::crypt::KeyMaterial::generate()?;
    write_new(path, key.to_file_text().as_bytes(), 0o600)
}

/// What keygen wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The private key (PKCS#8 PEM, mode 0600).
    pub private_key: PathBuf,
    /// The public JWK for the console.
    pub public_jwk: PathBuf,
    /// The public JWK's text, to print.
    pub public_jwk_json: String,
}

/// Generates an RSA-2048 pair and writes `<name>.private.pem` and
/// `<name>.public.jwk` into `dir` (created with mode 0700 if missing).
///
/// # Errors
/// [`KeygenError::Exists`] if either file exists; [`KeygenError::Write`] on IO
/// failure.
pub fn write_key_pair(dir: &Path, name: &str) -> Result<Generated, KeygenError> {
    let private_key = dir.join(format!("{name}.private.pem"));
    let public_jwk = dir.join(format!("{name}.public.jwk"));
    for path in [&private_key, &public_jwk] {
        if path.exists() {
            return Err(KeygenError::Exists(path.clone()));
        }
    }
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeygenError::Write {
                path: dir.to_owned(),
                source,
            })?;
    }

    let key = keys::generate()?;
    let public_jwk_json = key.public_jwk().to_json_pretty();
    write_new(&private_key, key.to_pkcs8_pem()?.as_bytes(), 0o600)?;
    write_new(
        &public_jwk,
        format!("{public_jwk_json}\n").as_bytes(),
        0o644,
    )?;
    Ok(Generated {
        private_key,
        public_jwk,
        public_jwk_json,
    })
}

/// Creates `path` with `mode`, failing if it exists (`O_EXCL`), so a race
/// with another writer cannot clobber a key either.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeygenError> {
    let io = |source| KeygenError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeygenError::Exists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The instructions printed after a key pair is written.
pub fn next_steps(generated: &Generated) -> String {
    format!(
        "Wrote the private key to {private} (mode 0600) and the public key to {public}.\n\
         \n\
         Next steps:\n\
         1. In the LINE Developers Console, open your Messaging API channel, then\n\
         \x20  Basic settings > Assertion Signing Key > Register a public key,\n\
         \x20  and paste this JWK:\n\
         \n{jwk}\n\
         \n\
         2. The console shows the key's kid. Put it in linetokd.toml:\n\
         \n\
         \x20  [[channel]]\n\
         \x20  key_file = \"{private}\"\n\
         \x20  kid = \"<the kid from the console>\"\n\
         \n\
         3. Keep {private} readable by the linetokd user only. To try it offline first,\n\
         \x20  register {public} in a sandbox config (see config/sandbox.toml).\n",
        private = generated.private_key.display(),
        public = generated.public_jwk.display(),
        jwk = generated.public_jwk_json,
    )
}
