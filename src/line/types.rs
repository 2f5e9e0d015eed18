//! LINE's channel access token contract, as Rust types.
//!
//! Every type here mirrors a schema of `line-openapi/channel-access-token.yml`
//! and carries its name; every field keeps LINE's exact snake_case name, so
//! serde needs no renames and a reader can hold this file next to the YAML.
//! The requests are form bodies or query strings (`Serialize`), the answers
//! JSON (`Deserialize`). Two deliberate choices, both from SDK bugs listed in
//! docs/line-api.md section 10:
//!
//! - every `expires_in` is an `i64`: the file says int32 for some answers,
//!   but long-lived tokens report values above `i32::MAX`;
//! - token values deserialize straight into [`AccessToken`], whose `Debug`
//!   prints a fingerprint, so an answer can be logged without leaking.
//!
//! Answers tolerate unknown fields (LINE may add some) and name what they
//! expected in words (`expecting`), not by their Rust type name; the contract test
//! checks the sandbox's answers strictly instead. The values that leave the
//! client (key IDs, tokens, a new token's lifetime) are checked while they
//! are parsed ([`crate::line::validate`]): an answer value exists only if it
//! has LINE's shape.
//!
//! Depends on `domain` and `line::validate`.

use serde::{Deserialize, Serialize};

use crate::domain::{AccessToken, ChannelId, KeyId};
use crate::line::validate;

/// The only `grant_type` these endpoints accept.
pub const GRANT_TYPE_CLIENT_CREDENTIALS: &str = "client_credentials";

// ---------------------------------------------------------------------------
// Requests. They borrow the secrets they carry and are not `Debug`, so a
// request can never be printed; the client builds one per call.
// ---------------------------------------------------------------------------

/// Form body of `POST /oauth2/v2.1/token` ("request of the
/// issueChannelTokenByJWT"), and of the JWT form of `POST /oauth2/v3/token`
/// (`IssueStatelessChannelTokenByJWTAssertionRequest`): the two schemas have
/// the same three fields.
#[derive(Serialize)]
pub(crate) struct IssueChannelTokenByJwtRequest<'a> {
    /// Always [`GRANT_TYPE_CLIENT_CREDENTIALS`].
    pub grant_type: &'static str,
    /// Always [`crate::line::jwt::CLIENT_ASSERTION_TYPE`].
    pub client_assertion_type: &'static str,
    /// A freshly signed assertion.
    pub client_assertion: &'a str,
}

/// Form body of `POST /v2/oauth/accessToken` ("Request of the
/// issueChannelToken"), and of the secret form of `POST /oauth2/v3/token`
/// (`IssueStatelessChannelTokenByClientSecretRequest`). It has no assertion
/// fields at all: sending them empty is the mistake docs/line-api.md 10.3 records.
#[derive(Serialize)]
pub(crate) struct IssueChannelTokenByClientSecretRequest<'a> {
    /// Always [`GRANT_TYPE_CLIENT_CREDENTIALS`].
    pub grant_type: &'static str,
    /// The channel ID.
    pub client_id: &'a str,
    /// The channel secret.
    pub client_secret: &'a str,
}

/// Query of `GET /oauth2/v2.1/verify`, and form body of
/// `POST /v2/oauth/verify` and `POST /v2/oauth/revoke`: the token alone.
#[derive(Serialize)]
pub(crate) struct AccessTokenParam<'a> {
    /// The token to verify or revoke.
    pub access_token: &'a str,
}

/// Query of `GET /oauth2/v2.1/tokens/kid`.
#[derive(Serialize)]
pub(crate) struct ChannelAccessTokenKeyIdsQuery<'a> {
    /// Always [`crate::line::jwt::CLIENT_ASSERTION_TYPE`].
    pub client_assertion_type: &'static str,
    /// A freshly signed assertion (it travels in the URL: keep it short-lived).
    pub client_assertion: &'a str,
}

/// Form body of `POST /oauth2/v2.1/revoke` ("Request of the
/// revokeChannelTokenByJWT"): all three fields are required.
#[derive(Serialize)]
pub(crate) struct RevokeChannelTokenByJwtRequest<'a> {
    /// The channel ID.
    pub client_id: &'a str,
    /// The channel secret (the assertion key is not used here).
    pub client_secret: &'a str,
    /// The token itself, not its key ID.
    pub access_token: &'a str,
}

// ---------------------------------------------------------------------------
// Answers.
// ---------------------------------------------------------------------------

/// `IssueChannelAccessTokenResponse`: a new v2.1 token. All four fields are
/// required by the contract.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "an issue answer (a JSON object)")]
pub struct IssueChannelAccessTokenResponse {
    /// The token (opaque; a JWS today), checked by [`validate::access_token`].
    #[serde(deserialize_with = "validate::de_access_token")]
    pub access_token: AccessToken,
    /// Seconds from issue to expiry, checked by [`validate::issued_lifetime`].
    #[serde(deserialize_with = "validate::de_issued_lifetime")]
    pub expires_in: i64,
    /// Always `Bearer`.
    pub token_type: String,
    /// LINE's unique ID of this token, as `/oauth2/v2.1/tokens/kid` lists it;
    /// checked by [`validate::key_id`].
    #[serde(deserialize_with = "validate::de_key_id")]
    pub key_id: KeyId,
}

/// `VerifyChannelAccessTokenResponse`: the answer of both verify endpoints
/// for a token LINE still accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "a verify answer (a JSON object)")]
pub struct VerifyChannelAccessTokenResponse {
    /// The channel the token was issued for.
    pub client_id: ChannelId,
    /// Seconds left before the token expires (int64 in the contract).
    pub expires_in: i64,
    /// Permissions granted to the token; "not always included".
    #[serde(default)]
    pub scope: Option<String>,
}

/// `ChannelAccessTokenKeyIdsResponse`: the channel's valid v2.1 tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "a key-ID list (a JSON object)")]
pub struct ChannelAccessTokenKeyIdsResponse {
    /// The `key_id` of every valid v2.1 token on the channel, ours or not;
    /// each checked by [`validate::key_id`], and one bad entry fails all.
    #[serde(deserialize_with = "validate::de_key_ids")]
    pub kids: Vec<KeyId>,
}

/// `IssueShortLivedChannelAccessTokenResponse`: a new short-lived token
/// (30 days; the 31st on a channel silently revokes the oldest).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "an issue answer (a JSON object)")]
pub struct IssueShortLivedChannelAccessTokenResponse {
    /// The token.
    #[serde(deserialize_with = "validate::de_access_token")]
    pub access_token: AccessToken,
    /// Seconds from issue to expiry.
    #[serde(deserialize_with = "validate::de_issued_lifetime")]
    pub expires_in: i64,
    /// Always `Bearer`.
    pub token_type: String,
}

/// `IssueStatelessChannelAccessTokenResponse`: a new stateless token (15
/// minutes, no issuance limit, cannot be revoked).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "an issue answer (a JSON object)")]
pub struct IssueStatelessChannelAccessTokenResponse {
    /// The token; "never try to parse" it.
    #[serde(deserialize_with = "validate::de_access_token")]
    pub access_token: AccessToken,
    /// Seconds from issue to expiry.
    #[serde(deserialize_with = "validate::de_issued_lifetime")]
    pub expires_in: i64,
    /// Always `Bearer`.
    pub token_type: String,
}

/// `ErrorResponse`: LINE's OAuth-style error body. Both fields are optional
/// in the contract (`error_description` is "not returned in certain
/// situations").
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ErrorResponse {
    /// Error summary, e.g. `invalid_client`, `invalid_request`.
    #[serde(default)]
    pub error: Option<String>,
    /// Details of the error.
    #[serde(default)]
    pub error_description: Option<String>,
}

/// The Messaging API's error body, `{"message": ...}`. Not in the token
/// contract file, but the v2.1 endpoints answer with it for the 30-token
/// refusal (400) and an unknown signing key (404), per LINE's reference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageErrorResponse {
    /// The error message.
    pub message: String,
}

/// What LINE said about a token it was asked to verify.
///
/// LINE answers 400 for an expired, revoked, unknown or malformed token. That
/// is an answer to the question, not a failure of the call, so it is a
/// variant here and not a [`crate::line::LineError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// LINE accepts the token.
    Valid(VerifyChannelAccessTokenResponse),
    /// LINE no longer accepts the token (HTTP 400).
    Rejected {
        /// LINE's `error` code, when it sent the OAuth shape.
        code: Option<String>,
        /// LINE's `error_description` or `message`, for humans only: never
        /// branch on it (its wording differs between LINE's own pages).
        description: Option<String>,
        /// `X-Line-Request-Id` of the answer.
        request_id: Option<String>,
    },
}

impl Verification {
    /// True when LINE accepts the token.
    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_the_contract_examples() {
        let issued: IssueChannelAccessTokenResponse = serde_json::from_str(
            r#"{"access_token":"eyJhbGciOiJIUz.....","token_type":"Bearer",
                "expires_in":2592000,"key_id":"sDTOzw5wIfxxxxPEzcmeQA"}"#,
        )
        .unwrap();
        assert_eq!(issued.key_id.as_str(), "sDTOzw5wIfxxxxPEzcmeQA");
        assert_eq!(issued.expires_in, 2_592_000);

        // Long-lived tokens report more than i32::MAX seconds.
        let verified: VerifyChannelAccessTokenResponse = serde_json::from_str(
            r#"{"client_id":"1350031035","expires_in":3138007490,"scope":"P CM"}"#,
        )
        .unwrap();
        assert_eq!(verified.expires_in, 3_138_007_490);
        let no_scope: VerifyChannelAccessTokenResponse =
            serde_json::from_str(r#"{"client_id":"1","expires_in":5}"#).unwrap();
        assert_eq!(no_scope.scope, None);
    }

    #[test]
    fn a_missing_required_field_is_an_error() {
        let missing_key_id = serde_json::from_str::<IssueChannelAccessTokenResponse>(
            r#"{"access_token":"t","token_type":"Bearer","expires_in":1}"#,
        );
        assert!(missing_key_id.is_err());
    }

    #[test]
    fn issued_tokens_print_without_their_value() {
        let issued: IssueChannelAccessTokenResponse = serde_json::from_str(
            r#"{"access_token":"SECRET-TOKEN-VALUE","token_type":"Bearer",
                "expires_in":1,"key_id":"k"}"#,
        )
        .unwrap();
        assert!(!format!("{issued:?}").contains("SECRET-TOKEN-VALUE"));
    }

    #[test]
    fn the_secret_form_sends_no_assertion_fields() {
        let form = serde_urlencoded_keys(&IssueChannelTokenByClientSecretRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id: "1",
            client_secret: "s",
        });
        assert_eq!(form, ["client_id", "client_secret", "grant_type"]);
    }

    /// The field names a request serializes, sorted.
    fn serde_urlencoded_keys<T: Serialize>(value: &T) -> Vec<String> {
        let json = serde_json::to_value(value).unwrap();
        let mut keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }
}
