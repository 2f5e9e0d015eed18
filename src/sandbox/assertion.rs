//! LINE's checks on a client assertion (docs/line-api.md §8), against the
//! sandbox's clock.
//!
//! LINE finds the public key by the header's `kid` (kids are unique across
//! LINE), so the key's channel is known before the claims are read; its
//! documented error "iss and clientId of key do not match" shows that order.
//! The checks, in order:
//!
//! 1. the value is a compact JWS whose header has `alg` RS256;
//! 2. `kid` names a registered key (else 404 `{"message"}`);
//! 3. the RS256 signature verifies with that key;
//! 4. `iss` is the key's channel and `sub` equals `iss`;
//! 5. `aud` is `https://api.line.me/`;
//! 6. `exp` is a JSON number, not in the past, at most 30 min ahead;
//! 7. when issuing a v2.1 token, `token_exp` is a number in 1..=2,592,000.
//!
//! jsonwebtoken only checks the signature here: its own `exp` check reads
//! the system clock, which the sandbox must never do (docs/design.md §9).
//! Depends on `line::jwt` constants and claim names, `line::keys` for the
//! public key, and the refusal type.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::errors::LineRefusal;
use crate::domain::{ChannelId, SigningKid};
use crate::line::jwt::{AUDIENCE, AssertionClaims, MAX_ASSERTION_WINDOW, MAX_TOKEN_EXP_SECS};
use crate::line::keys::VerifyingKey;

/// What an assertion is for: only issuing a v2.1 token needs `token_exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /oauth2/v2.1/token`: `token_exp` required.
    IssueV21,
    /// `GET /oauth2/v2.1/tokens/kid`: `token_exp` ignored.
    ListKids,
    /// `POST /oauth2/v3/token`: `token_exp` ignored.
    Stateless,
}

/// An assertion that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAssertion {
    /// The channel it authenticates (the key's channel, equal to iss/sub).
    pub channel_id: ChannelId,
    /// The key that signed it.
    pub kid: SigningKid,
    /// Its claims.
    pub claims: AssertionClaims,
}

/// Why an assertion was refused. Each maps to the answer LINE gives (or, where
/// LINE's text is undocumented, a plausible guess: see [`Self::refusal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not a compact JWS with a readable header and JSON claims.
    #[error("the assertion is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not RS256.
    #[error("the assertion is signed with {0}, LINE accepts RS256 only")]
    Algorithm(String),
    /// No `kid`, or a `kid` registered on no channel.
    #[error("no registered key has this kid")]
    UnknownKey,
    /// The signature does not verify with the registered key.
    #[error("the signature does not verify")]
    Signature,
    /// `iss` is not the channel the key is registered on.
    #[error("iss is not the channel of the signing key")]
    Issuer,
    /// `sub` differs from `iss`.
    #[error("sub differs from iss")]
    Subject,
    /// `aud` is not `https://api.line.me/`.
    #[error("aud is not {AUDIENCE}")]
    Audience,
    /// `exp` missing, not a number, or not after now.
    #[error("exp is missing, not a number or in the past")]
    Expired,
    /// `exp` more than 30 minutes ahead.
    #[error("exp is more than 30 minutes ahead")]
    TooFarAhead,
    /// `token_exp` missing, not an integer, or outside 1..=2,592,000.
    #[error("token_exp must be a number of seconds in 1..={MAX_TOKEN_EXP_SECS}")]
    TokenExp,
}

impl AssertionError {
    /// The answer LINE gives. Documented texts: "iss and clientId of key do
    /// not match", "Invalid exp", and the 404 message. The others are
    /// guesses in LINE's style, since LINE does not document them.
    pub fn refusal(&self) -> LineRefusal {
        match self {
            Self::UnknownKey => LineRefusal::unknown_key(),
            Self::Issuer => LineRefusal::invalid_client("iss and clientId of key do not match"),
            Self::Expired => LineRefusal::invalid_client("Invalid exp"),
            // Guesses from here on.
            Self::TooFarAhead => {
                LineRefusal::invalid_client("Invalid exp: must be within 30 minutes")
            }
            Self::Malformed => LineRefusal::invalid_client("Invalid client_assertion"),
            Self::Algorithm(_) => LineRefusal::invalid_client("Invalid alg: must be RS256"),
            Self::Signature => LineRefusal::invalid_client("Invalid signature"),
            Self::Subject => LineRefusal::invalid_client("iss and sub do not match"),
            Self::Audience => LineRefusal::invalid_client("Invalid aud"),
            Self::TokenExp => LineRefusal::invalid_request("Invalid token_exp"),
        }
    }
}

/// A registered key: the channel it belongs to and its public half.
pub type KeyLookup<'a> = dyn Fn(&SigningKid) -> Option<(ChannelId, Arc<VerifyingKey>)> + 'a;

/// Runs LINE's checks on `assertion` at `now`; `key_for` finds a kid's
/// channel and public key.
///
/// # Errors
/// The first check that fails, as an [`AssertionError`].
pub fn verify(
    assertion: &str,
    now: DateTime<Utc>,
    purpose: Purpose,
    key_for: &KeyLookup<'_>,
) -> Result<VerifiedAssertion, AssertionError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| AssertionError::Malformed)?;
    if header.alg != Algorithm::RS256 {
        return Err(AssertionError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = SigningKid::new(header.kid.ok_or(AssertionError::UnknownKey)?);
    let (channel_id, key) = key_for(&kid).ok_or(AssertionError::UnknownKey)?;

    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Value>(assertion, key.decoding_key(), &validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => AssertionError::Signature,
                _ => AssertionError::Malformed,
            }
        })?;
    let claims = data.claims;
    if !claims.is_object() {
        return Err(AssertionError::Malformed);
    }

    let iss = claims.get("iss").and_then(Value::as_str);
    if iss != Some(channel_id.as_str()) {
        return Err(AssertionError::Issuer);
    }
    let sub = claims.get("sub").and_then(Value::as_str);
    if sub != iss {
        return Err(AssertionError::Subject);
    }
    let aud = claims.get("aud").and_then(Value::as_str);
    if aud != Some(AUDIENCE) {
        return Err(AssertionError::Audience);
    }
    let exp = claims
        .get("exp")
        .and_then(whole_seconds)
        .ok_or(AssertionError::Expired)?;
    let now_secs = now.timestamp();
    if exp <= now_secs {
        return Err(AssertionError::Expired);
    }
    if exp - now_secs > MAX_ASSERTION_WINDOW.num_seconds() {
        return Err(AssertionError::TooFarAhead);
    }
    let token_exp = match purpose {
        Purpose::IssueV21 => {
            let secs = claims
                .get("token_exp")
                .and_then(whole_seconds)
                .ok_or(AssertionError::TokenExp)?;
            if !(1..=MAX_TOKEN_EXP_SECS).contains(&secs) {
                return Err(AssertionError::TokenExp);
            }
            Some(secs)
        }
        Purpose::ListKids | Purpose::Stateless => None,
    };
    Ok(VerifiedAssertion {
        claims: AssertionClaims {
            iss: channel_id.as_str().to_owned(),
            sub: channel_id.as_str().to_owned(),
            aud: AUDIENCE.to_owned(),
            exp,
            token_exp,
        },
        channel_id,
        kid,
    })
}

/// A JSON number as whole seconds (RFC 7519 NumericDate allows fractions;
/// they are truncated). Strings are refused: LINE's table says Number.
fn whole_seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                // Truncation is the intent: a NumericDate's fraction is
                // below the sandbox's one-second resolution.
                .map(|f| f.trunc() as i64)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use chrono::Duration;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::line::keys;

    struct Fixture {
        encoding: EncodingKey,
        other: EncodingKey,
        verifying: Arc<VerifyingKey>,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let signing = keys::generate().unwrap();
            let other = keys::generate().unwrap();
            let jwk = signing.public_jwk().to_json_pretty();
            Fixture {
                encoding: signing.encoding_key().unwrap(),
                other: other.encoding_key().unwrap(),
                verifying: Arc::new(VerifyingKey::parse(jwk.as_bytes()).unwrap()),
            }
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn sign(kid: Option<&str>, claims: Value, key: &EncodingKey) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn good_claims() -> Value {
        json!({
            "iss": "1234", "sub": "1234", "aud": AUDIENCE,
            "exp": now().timestamp() + 600, "token_exp": 86_400
        })
    }

    fn check(assertion: &str, purpose: Purpose) -> Result<VerifiedAssertion, AssertionError> {
        let key = fixture().verifying.clone();
        let lookup = move |kid: &SigningKid| {
            (kid.as_str() == "kid-1").then(|| (ChannelId::new("1234"), key.clone()))
        };
        verify(assertion, now(), purpose, &lookup)
    }

    fn with(field: &str, value: Value) -> Value {
        let mut c = good_claims();
        c[field] = value;
        c
    }

    #[test]
    fn a_good_assertion_passes_and_names_its_channel() {
        let f = fixture();
        let ok = check(
            &sign(Some("kid-1"), good_claims(), &f.encoding),
            Purpose::IssueV21,
        )
        .unwrap();
        assert_eq!(ok.channel_id, ChannelId::new("1234"));
        assert_eq!(ok.kid, SigningKid::new("kid-1"));
        assert_eq!(ok.claims.token_exp, Some(86_400));
        // the boundaries are inclusive: exactly 30 min ahead, exactly 30 days
        let edge = json!({
            "iss": "1234", "sub": "1234", "aud": AUDIENCE,
            "exp": now().timestamp() + 1800, "token_exp": MAX_TOKEN_EXP_SECS
        });
        assert!(check(&sign(Some("kid-1"), edge, &f.encoding), Purpose::IssueV21).is_ok());
    }

    #[test]
    fn each_rule_refuses_with_its_own_error() {
        let f = fixture();
        let t = now().timestamp();
        let cases: Vec<(&str, String, AssertionError)> = vec![
            (
                "unknown kid",
                sign(Some("kid-2"), good_claims(), &f.encoding),
                AssertionError::UnknownKey,
            ),
            (
                "no kid",
                sign(None, good_claims(), &f.encoding),
                AssertionError::UnknownKey,
            ),
            (
                "other key",
                sign(Some("kid-1"), good_claims(), &f.other),
                AssertionError::Signature,
            ),
            (
                "iss",
                sign(Some("kid-1"), with("iss", json!("9999")), &f.encoding),
                AssertionError::Issuer,
            ),
            (
                "sub",
                sign(Some("kid-1"), with("sub", json!("9999")), &f.encoding),
                AssertionError::Subject,
            ),
            (
                "aud",
                sign(
                    Some("kid-1"),
                    with("aud", json!("https://api.line.me")),
                    &f.encoding,
                ),
                AssertionError::Audience,
            ),
            (
                "exp now",
                sign(Some("kid-1"), with("exp", json!(t)), &f.encoding),
                AssertionError::Expired,
            ),
            (
                "exp string",
                sign(
                    Some("kid-1"),
                    with("exp", json!((t + 60).to_string())),
                    &f.encoding,
                ),
                AssertionError::Expired,
            ),
            (
                "exp far",
                sign(Some("kid-1"), with("exp", json!(t + 1801)), &f.encoding),
                AssertionError::TooFarAhead,
            ),
            (
                "token_exp big",
                sign(
                    Some("kid-1"),
                    with("token_exp", json!(MAX_TOKEN_EXP_SECS + 1)),
                    &f.encoding,
                ),
                AssertionError::TokenExp,
            ),
            (
                "token_exp zero",
                sign(Some("kid-1"), with("token_exp", json!(0)), &f.encoding),
                AssertionError::TokenExp,
            ),
            (
                "token_exp missing",
                sign(Some("kid-1"), with("token_exp", Value::Null), &f.encoding),
                AssertionError::TokenExp,
            ),
            ("garbage", "not-a-jwt".to_owned(), AssertionError::Malformed),
        ];
        for (name, assertion, want) in cases {
            assert_eq!(
                check(&assertion, Purpose::IssueV21).unwrap_err(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn token_exp_is_only_required_for_issuing_v21() {
        let f = fixture();
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("token_exp");
        let a = sign(Some("kid-1"), c, &f.encoding);
        assert!(check(&a, Purpose::ListKids).is_ok());
        assert!(check(&a, Purpose::Stateless).is_ok());
        assert_eq!(
            check(&a, Purpose::IssueV21).unwrap_err(),
            AssertionError::TokenExp
        );
    }

    #[test]
    fn hs256_is_refused_before_any_key_lookup() {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("kid-1".into());
        let a =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(b"s")).unwrap();
        assert!(matches!(
            check(&a, Purpose::IssueV21),
            Err(AssertionError::Algorithm(_))
        ));
    }

    #[test]
    fn the_sandbox_clock_not_the_system_clock_judges_exp() {
        // An assertion that expired in 2001 by the system clock is fresh
        // when the sandbox clock stands in 2001, and stale a minute later.
        let f = fixture();
        let then = DateTime::from_timestamp(1_000_000_000, 0).unwrap_or_default();
        let claims = json!({
            "iss": "1234", "sub": "1234", "aud": AUDIENCE,
            "exp": then.timestamp() + 60, "token_exp": 60
        });
        let key = f.verifying.clone();
        let lookup = move |_: &SigningKid| Some((ChannelId::new("1234"), key.clone()));
        let a = sign(Some("kid-1"), claims, &f.encoding);
        assert!(verify(&a, then, Purpose::IssueV21, &lookup).is_ok());
        assert_eq!(
            verify(&a, then + Duration::seconds(60), Purpose::IssueV21, &lookup).unwrap_err(),
            AssertionError::Expired
        );
    }
}
