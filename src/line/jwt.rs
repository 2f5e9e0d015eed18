//! The client assertion: the signed JWT with which LINE's v2.1 endpoints
//! (issue, key-ID listing) and the stateless endpoint authenticate a channel.
//!
//! LINE's rules (docs/line-api.md §8): header `alg` RS256, `typ` JWT, `kid` of a
//! public key registered on the channel; claims `iss` = `sub` = channel ID,
//! `aud` `https://api.line.me/`, `exp` at most 30 minutes ahead, and, when
//! issuing, `token_exp` (the requested token lifetime) at most 30 days. All
//! times are JSON numbers: LINE's own doc example shows strings, its table
//! says Number, and RFC 7519 says NumericDate.
//!
//! LINE judges `exp` by its own clock, so an assertion is built fresh for
//! every request from the clock passed in, with `exp` well inside the window
//! (10 minutes by default) so a few minutes of skew either way still pass.
//!
//! [`AssertionClaims`] is shared with the sandbox, which checks the same rules
//! from the other side.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::domain::{ChannelId, SigningKid};
use crate::line::keys::SigningKey;

/// The `aud` LINE requires, trailing slash included.
pub const AUDIENCE: &str = "https://api.line.me/";

/// The `client_assertion_type` form value that goes with every assertion.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest assertion lifetime LINE accepts.
pub const MAX_ASSERTION_WINDOW: Duration = Duration::minutes(30);

/// The assertion lifetime used unless configured otherwise: far enough from
/// both edges of LINE's window to absorb clock skew.
pub const DEFAULT_ASSERTION_WINDOW: Duration = Duration::minutes(10);

/// The longest token lifetime (`token_exp`) LINE grants: 30 days.
pub const MAX_TOKEN_EXP_SECS: i64 = 2_592_000;

/// The claims of a LINE client assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The channel ID.
    pub iss: String,
    /// The channel ID again; LINE requires `iss` = `sub`.
    pub sub: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// When the assertion stops being valid (Unix seconds).
    pub exp: i64,
    /// The requested lifetime of the token being issued, in seconds. Absent
    /// on calls that issue nothing (listing key IDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp: Option<i64>,
}

/// Why an assertion could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The configured assertion window is outside LINE's limits.
    #[error(
        "assertion window {secs}s is out of range: it must be more than 0 and at most 1800 s (30 min)"
    )]
    Window {
        /// The window asked for, in seconds.
        secs: i64,
    },
    /// The requested token lifetime is outside LINE's limits.
    #[error("token lifetime {secs}s is out of range: it must be 1 s to 2592000 s (30 days)")]
    TokenExp {
        /// The lifetime asked for, in seconds.
        secs: i64,
    },
    /// Signing failed.
    #[error("signing the assertion failed: {0}")]
    Sign(String),
}

/// Builds signed assertions for one channel.
#[derive(Debug)]
pub struct AssertionSigner {
    channel_id: ChannelId,
    kid: SigningKid,
    /// Shared: the config holds the loaded key too, and a reload builds
    /// new signers from the same key.
    key: Arc<SigningKey>,
    window: Duration,
}

impl AssertionSigner {
    /// A signer for `channel_id` with the registered key `kid`, using the
    /// default 10-minute window.
    pub fn new(channel_id: ChannelId, kid: SigningKid, key: impl Into<Arc<SigningKey>>) -> Self {
        Self {
            channel_id,
            kid,
            key: key.into(),
            window: DEFAULT_ASSERTION_WINDOW,
        }
    }

    /// Sets how far ahead `exp` lies.
    ///
    /// # Errors
    /// [`JwtError::Window`] unless `0 < window <= 30 min`.
    pub fn with_window(mut self, window: Duration) -> Result<Self, JwtError> {
        if window <= Duration::zero() || window > MAX_ASSERTION_WINDOW {
            return Err(JwtError::Window {
                secs: window.num_seconds(),
            });
        }
        self.window = window;
        Ok(self)
    }

    /// The channel this signer speaks for.
    pub fn channel_id(&self) -> &ChannelId {
        &self.channel_id
    }

    /// The registered signing key's `kid`.
    pub fn kid(&self) -> &SigningKid {
        &self.kid
    }

    /// Whether the key is held parsed (for tests of who releases it).
    pub fn key_is_parsed(&self) -> bool {
        self.key.is_parsed()
    }

    /// Drops the parsed key until the next signature (see
    /// [`SigningKey::release`]): the channel's work is done for now.
    pub fn release_key(&self) {
        self.key.release();
    }

    /// The claims an assertion built at `now` carries.
    ///
    /// # Errors
    /// [`JwtError::TokenExp`] unless `token_exp` is 1 s to 30 days.
    pub fn claims(
        &self,
        now: DateTime<Utc>,
        token_exp: Option<Duration>,
    ) -> Result<AssertionClaims, JwtError> {
        let token_exp = token_exp
            .map(|d| {
                let secs = d.num_seconds();
                if (1..=MAX_TOKEN_EXP_SECS).contains(&secs) {
                    Ok(secs)
                } else {
                    Err(JwtError::TokenExp { secs })
                }
            })
            .transpose()?;
        Ok(AssertionClaims {
            iss: self.channel_id.to_string(),
            sub: self.channel_id.to_string(),
            aud: AUDIENCE.to_owned(),
            exp: (now + self.window).timestamp(),
            token_exp,
        })
    }

    /// A freshly signed RS256 assertion built at `now`. `token_exp` is the
    /// requested token lifetime when issuing, `None` for calls that issue
    /// nothing.
    ///
    /// # Errors
    /// [`JwtError::TokenExp`] for a lifetime outside 1 s..=30 days;
    /// [`JwtError::Sign`] if the crypto library fails.
    pub fn sign(
        &self,
        now: DateTime<Utc>,
        token_exp: Option<Duration>,
    ) -> Result<String, JwtError> {
        let claims = self.claims(now, token_exp)?;
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(self.kid.to_string());
        // The compact JWS as `jsonwebtoken::encode` builds it, signed with
        // the held parsed key (see `SigningKey::sign_rs256`).
        let message = format!("{}.{}", json_part(&header)?, json_part(&claims)?);
        let signature = self
            .key
            .sign_rs256(message.as_bytes())
            .map_err(|e| JwtError::Sign(e.to_string()))?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// One base64url-encoded JSON part of a compact JWS.
fn json_part<T: Serialize>(value: &T) -> Result<String, JwtError> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|e| JwtError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Validation;

    use super::*;
    use crate::line::keys::{self, VerifyingKey};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn signer() -> (AssertionSigner, VerifyingKey) {
        let key = keys::generate().unwrap();
        let public = VerifyingKey::parse(key.public_jwk().to_json_pretty().as_bytes()).unwrap();
        let signer =
            AssertionSigner::new(ChannelId::new("1234567890"), SigningKid::new("kid-1"), key);
        (signer, public)
    }

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn header_and_claims_are_what_line_requires() {
        let (signer, public) = signer();
        let now = at(1_800_000_000);
        let jwt = signer.sign(now, Some(Duration::days(30))).unwrap();
        let parts: Vec<_> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);

        let header = decode_part(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], "kid-1");

        let claims = decode_part(parts[1]);
        assert_eq!(claims["iss"], "1234567890");
        assert_eq!(claims["sub"], "1234567890");
        assert_eq!(claims["aud"], "https://api.line.me/");
        // Numbers, not strings (LINE's doc example gets this wrong).
        assert_eq!(claims["exp"], serde_json::json!(1_800_000_600));
        assert_eq!(claims["token_exp"], serde_json::json!(2_592_000));

        // And the signature verifies with the public half.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_audience(&[AUDIENCE]);
        let decoded =
            jsonwebtoken::decode::<AssertionClaims>(&jwt, public.decoding_key(), &validation)
                .unwrap();
        assert_eq!(decoded.claims.token_exp, Some(MAX_TOKEN_EXP_SECS));
    }

    #[test]
    fn kid_listing_assertion_has_no_token_exp() {
        let (signer, _) = signer();
        let jwt = signer.sign(at(1_800_000_000), None).unwrap();
        let claims = decode_part(jwt.split('.').nth(1).unwrap());
        assert!(claims.get("token_exp").is_none(), "{claims}");
    }

    #[test]
    fn window_and_lifetime_limits_are_enforced() {
        let (signer, _) = signer();
        assert!(matches!(
            signer.sign(at(0), Some(Duration::days(31))),
            Err(JwtError::TokenExp { secs: 2_678_400 })
        ));
        assert!(signer.sign(at(0), Some(Duration::zero())).is_err());
        let signer = signer.with_window(Duration::minutes(30)).unwrap();
        assert_eq!(signer.claims(at(0), None).unwrap().exp, 1800);
        assert!(signer.with_window(Duration::minutes(31)).is_err());
        let (signer, _) = self::signer();
        assert!(signer.with_window(Duration::zero()).is_err());
    }

    #[test]
    fn a_fresh_assertion_per_call_follows_the_clock() {
        let (signer, _) = signer();
        let a = signer.claims(at(1000), None).unwrap();
        let b = signer.claims(at(2000), None).unwrap();
        assert_eq!(b.exp - a.exp, 1000);
    }
}
