//! The sandbox's config file: which channels exist, their secrets and their
//! registered assertion public keys, the LINE Login channels, plus optional
//! fault rules.
//!
//! ```toml
//! [[channels]]
//! id = "1234567890"
//! secret = "0123456789abcdef0123456789abcdef"
//! keys = [{ kid = "…", public_key_file = "sandbox-keys/example-public.jwk" }]
//!
//! [[login_channels]]  # LINE Login channels (user tokens), optional
//! id = "1660000000"
//! secret = "fedcba9876543210fedcba9876543210"
//! app_type = "web"             # "web": refresh/revoke need the secret; "native": ignored
//! rotate_refresh_tokens = false # true: each refresh answers a new refresh token
//!
//! [faults]            # optional, same shape as GET /_sandbox/faults
//! seed = 7
//! [faults.endpoints."*"]
//! latency_ms = 20
//! ```
//!
//! A public key file is what `linetokd keygen` writes for the console (a
//! public JWK) or a PEM; relative paths are taken from the config file's
//! directory. Loading reads and checks every key file, so a loaded config is
//! ready to serve: channel IDs are digits and unique, kids are unique across
//! channels (LINE assigns them), keys are RSA-2048, rates are probabilities.
//!
//! The channel secret sits inline: this is a test double's config, not the
//! daemon's. Depends on `line::keys`, `domain` and `faults`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::errors::SandboxError;
use super::faults::Faults;
use super::login::{LoginAppType, LoginChannelConfig};
use crate::domain::{ChannelId, ChannelSecret, SigningKid};
use crate::line::keys::{REQUIRED_BITS, VerifyingKey};

/// A loaded, checked sandbox configuration.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// The channels the sandbox knows.
    pub channels: Vec<ChannelConfig>,
    /// The LINE Login channels the sandbox knows.
    pub login_channels: Vec<LoginChannelConfig>,
    /// Fault rules in force at start.
    pub faults: Faults,
}

/// One channel: its ID, secret and registered public keys.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The channel ID (the assertion's `iss`/`sub`).
    pub id: ChannelId,
    /// The channel secret (revoke, short-lived and stateless secret forms).
    pub secret: ChannelSecret,
    /// Registered assertion public keys by `kid`.
    pub keys: Vec<(SigningKid, VerifyingKey)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    channels: Vec<RawChannel>,
    #[serde(default)]
    login_channels: Vec<RawLoginChannel>,
    #[serde(default)]
    faults: Faults,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    id: String,
    secret: String,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoginChannel {
    id: String,
    secret: String,
    #[serde(default = "default_app_type")]
    app_type: LoginAppType,
    #[serde(default)]
    rotate_refresh_tokens: bool,
}

/// The stricter of the two: the secret is checked.
fn default_app_type() -> LoginAppType {
    LoginAppType::Web
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: String,
    public_key_file: PathBuf,
}

impl SandboxConfig {
    /// Reads and checks the config file at `path`, loading every key file.
    ///
    /// # Errors
    /// [`SandboxError`] naming the file, the key and what is wrong.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        // Read with a bound (16 MiB holds 100,000 channels): a wrong
        // path such as /dev/zero must end with an error, not fill memory.
        const MAX_SANDBOX_CONFIG: u64 = 16 * 1024 * 1024;
        let read_err = |source| SandboxError::ConfigRead {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        {
            use std::io::Read as _;
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_SANDBOX_CONFIG + 1).read_to_end(&mut bytes))
                .map_err(read_err)?;
        }
        if bytes.len() as u64 > MAX_SANDBOX_CONFIG {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "it is larger than 16 MiB, the most the sandbox reads from its config file",
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            SandboxError::ConfigParse { source, .. } => SandboxError::ConfigParse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses config text; relative key paths are taken from `base_dir`.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, SandboxError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| SandboxError::ConfigParse {
            path: PathBuf::from("<text>"),
            source: Box::new(source),
        })?;
        raw.faults.validate()?;
        let mut kid_owner: HashMap<SigningKid, ChannelId> = HashMap::new();
        let mut channels: Vec<ChannelConfig> = Vec::with_capacity(raw.channels.len());
        for ch in raw.channels {
            if ch.id.is_empty() || !ch.id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SandboxError::BadChannelId(ch.id));
            }
            let id = ChannelId::new(ch.id);
            if channels.iter().any(|c| c.id == id) {
                return Err(SandboxError::DuplicateChannel(id));
            }
            if ch.secret.is_empty() {
                return Err(SandboxError::EmptySecret(id));
            }
            let mut keys = Vec::with_capacity(ch.keys.len());
            for k in ch.keys {
                let kid = SigningKid::new(k.kid);
                if let Some(owner) = kid_owner.insert(kid.clone(), id.clone()) {
                    return Err(SandboxError::DuplicateKid { kid, owner });
                }
                let file = base_dir.join(&k.public_key_file);
                let key = VerifyingKey::from_file(&file).map_err(|source| SandboxError::Key {
                    channel: id.clone(),
                    kid: kid.clone(),
                    source,
                })?;
                check_key_size(&id, &kid, &key)?;
                keys.push((kid, key));
            }
            channels.push(ChannelConfig {
                id,
                secret: ChannelSecret::new(ch.secret),
                keys,
            });
        }
        let mut login_channels: Vec<LoginChannelConfig> =
            Vec::with_capacity(raw.login_channels.len());
        for ch in raw.login_channels {
            let config = LoginChannelConfig {
                id: ChannelId::new(ch.id),
                secret: ChannelSecret::new(ch.secret),
                app_type: ch.app_type,
                rotate_refresh_tokens: ch.rotate_refresh_tokens,
            };
            check_login_channel(&config)?;
            if login_channels.iter().any(|c| c.id == config.id) {
                return Err(login_channel_error(&config.id, "listed twice"));
            }
            if let Some(c) = channels.iter().find(|c| c.id == config.id)
                && c.secret != config.secret
            {
                return Err(login_channel_error(
                    &config.id,
                    "also listed in channels[] with another secret; a channel has one secret",
                ));
            }
            login_channels.push(config);
        }
        Ok(Self {
            channels,
            login_channels,
            faults: raw.faults,
        })
    }
}

/// A Login channel's own checks: a digit ID and a secret.
pub(crate) fn check_login_channel(config: &LoginChannelConfig) -> Result<(), SandboxError> {
    let id = config.id.as_str();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(login_channel_error(
            &config.id,
            "a LINE channel ID is a non-empty string of digits",
        ));
    }
    if config.secret.expose().is_empty() {
        return Err(login_channel_error(&config.id, "secret must not be empty"));
    }
    Ok(())
}

pub(crate) fn login_channel_error(id: &ChannelId, problem: &str) -> SandboxError {
    SandboxError::LoginChannel {
        channel: id.as_str().to_owned(),
        problem: problem.to_owned(),
    }
}

/// LINE registers RSA-2048 keys only (docs/line-api.md §8).
pub(crate) fn check_key_size(
    channel: &ChannelId,
    kid: &SigningKid,
    key: &VerifyingKey,
) -> Result<(), SandboxError> {
    let bits = key.modulus_bits();
    if bits == REQUIRED_BITS {
        Ok(())
    } else {
        Err(SandboxError::KeySize {
            channel: channel.clone(),
            kid: kid.clone(),
            bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
    }

    fn parse(text: &str) -> Result<SandboxConfig, SandboxError> {
        SandboxConfig::parse(text, &fixtures())
    }

    #[test]
    fn jwk_and_pem_public_keys_load_from_relative_paths() {
        let cfg = parse(
            r#"
            [[channels]]
            id = "1234567890"
            secret = "s3cret"
            keys = [{ kid = "a", public_key_file = "rsa2048-public.jwk" },
                    { kid = "b", public_key_file = "rsa2048-public.pem" }]
            [[channels]]
            id = "42"
            secret = "other"
            [faults]
            seed = 3
            [faults.endpoints."*"]
            latency_ms = 5
            [faults.endpoints."/oauth2/v2.1/verify"]
            refuse_live_rate = 0.1
            refuse_live_as = "invalid"
            [faults.endpoints."/oauth2/v2.1/token"]
            malformed_rate = 0.2
            malformed_as = "truncated_json"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.channels.len(), 2);
        assert_eq!(cfg.channels[0].keys.len(), 2);
        assert_eq!(cfg.faults.seed, Some(3));
        assert_eq!(cfg.faults.endpoints["*"].latency_ms, 5);
        let verify = &cfg.faults.endpoints["/oauth2/v2.1/verify"];
        assert_eq!(
            (verify.refuse_live_rate, verify.refuse_live_as),
            (0.1, Some(super::super::VerifyRefusal::Invalid))
        );
        let issue = &cfg.faults.endpoints["/oauth2/v2.1/token"];
        assert_eq!(
            (issue.malformed_rate, issue.malformed_as),
            (0.2, Some(super::super::MalformedBody::TruncatedJson))
        );
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            ("[[channels]]\nid = \"12a\"\nsecret = \"s\"", "12a"),
            (
                "[[channels]]\nid = \"1\"\nsecret = \"s\"\n[[channels]]\nid = \"1\"\nsecret = \"t\"",
                "listed twice",
            ),
            ("[[channels]]\nid = \"1\"\nsecret = \"\"", "secret"),
            (
                "[[channels]]\nid = \"1\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"rsa1024-pkcs8.pem\" }]",
                "1024",
            ),
            (
                "[[channels]]\nid = \"1\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"missing.jwk\" }]",
                "missing.jwk",
            ),
            (
                "[[channels]]\nid = \"1\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"ec-p256-pkcs8.pem\" }]",
                "kid k",
            ),
            (
                "[[channels]]\nid = \"1\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"rsa2048-public.jwk\" }]\n[[channels]]\nid = \"2\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"rsa2048-public.jwk\" }]",
                "already registered on channel 1",
            ),
            ("[[channels]]\nid = \"1\"\nsecrets = \"s\"", "secrets"),
            ("[faults.endpoints.\"/nope\"]\nerror_rate = 0.5", "/nope"),
            ("[faults.endpoints.\"*\"]\ndrop_rate = 2.0", "drop_rate"),
            (
                "[faults.endpoints.\"/oauth2/v2.1/revoke\"]\nmalformed_rate = 0.5",
                "malformed_rate",
            ),
            (
                "[faults.endpoints.\"*\"]\nmalformed_as = \"xml\"",
                "malformed_as",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}\n=> {err}");
        }
    }

    #[test]
    fn load_names_the_file_and_resolves_paths_from_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let key = fixtures().join("rsa2048-public.jwk");
        std::fs::copy(&key, dir.path().join("k.jwk")).unwrap();
        let path = dir.path().join("sandbox.toml");
        std::fs::write(
            &path,
            "[[channels]]\nid = \"1\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"k.jwk\" }]\n",
        )
        .unwrap();
        assert_eq!(
            SandboxConfig::load(&path).unwrap().channels[0].keys.len(),
            1
        );
        std::fs::write(&path, "channels = 3").unwrap();
        let err = SandboxConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("sandbox.toml"), "{err}");
    }

    #[test]
    fn a_config_that_is_not_a_config_file_ends_with_an_error_not_a_full_memory() {
        let err = SandboxConfig::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than 16 MiB"), "{err}");
    }

    #[test]
    fn login_channels_parse_with_their_defaults_and_checks() {
        let config = parse(
            "[[channels]]\nid = \"1660000001\"\nsecret = \"same\"\n\
             [[login_channels]]\nid = \"1660000000\"\nsecret = \"s\"\n\
             [[login_channels]]\nid = \"1660000001\"\nsecret = \"same\"\n\
             app_type = \"native\"\nrotate_refresh_tokens = true\n",
        )
        .unwrap();
        let [web, native] = &config.login_channels[..] else {
            panic!("{:?}", config.login_channels);
        };
        assert_eq!(web.app_type, LoginAppType::Web);
        assert!(!web.rotate_refresh_tokens);
        assert_eq!(native.app_type, LoginAppType::Native);
        assert!(native.rotate_refresh_tokens);
        for (text, want) in [
            (
                "[[login_channels]]\nid = \"x\"\nsecret = \"s\"\n",
                "non-empty string of digits",
            ),
            (
                "[[login_channels]]\nid = \"1\"\nsecret = \"\"\n",
                "secret must not be empty",
            ),
            (
                "[[login_channels]]\nid = \"1\"\nsecret = \"s\"\n\
                 [[login_channels]]\nid = \"1\"\nsecret = \"s\"\n",
                "listed twice",
            ),
            (
                "[[channels]]\nid = \"1\"\nsecret = \"a\"\n\
                 [[login_channels]]\nid = \"1\"\nsecret = \"b\"\n",
                "another secret",
            ),
            (
                "[[login_channels]]\nid = \"1\"\nsecret = \"s\"\napp_type = \"spa\"\n",
                "unknown variant",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
