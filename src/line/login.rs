//! LINE Login's user token endpoints: the operations, their wire types and
//! a client.
//!
//! These keep a *user's* LINE Login access token alive, not a channel's
//! (docs/line-api.md section 7). Three of them share URLs with the channel
//! token API (`/oauth2/v2.1/token`, `/verify`, `/revoke`) but are not in its
//! OpenAPI file, so they are named by their own enum, [`LoginEndpoint`],
//! and [`crate::line::Endpoint`] stays exactly that file's eight operations.
//!
//! [`LoginClient`] wraps a [`LineClient`] and sends every request through
//! its one path (`LineClient::send`): the same connection pool, timeout,
//! body cap, no redirects, `X-Line-Request-Id` and `Date` skew, debug line,
//! and classification into [`LineError`] (here [`LoginError`], the same
//! type over [`LoginEndpoint`]). Its own [`RequestObserver`] sees each call
//! under a `login_*` label.
//!
//! What a caller branches on:
//! - [`LineError::is_invalid_grant`]: the refresh token is dead (expired at
//!   its 90-day horizon, rotated out, revoked): the user must log in again;
//! - [`LineError::is_invalid_client`]: the channel ID or secret is wrong;
//! - [`LineError::is_rate_limited`] and [`LineError::retry_after`]: 429;
//! - [`LineError::is_transient`]: back off and retry;
//! - [`LineError::may_have_issued`] on a refresh: LINE may have answered
//!   with a new refresh token nobody received (rotation mode), so the old
//!   one may be dead.
//!
//! Verify's 400 and deauthorize's 400 are answers ([`Verification`],
//! [`Deauthorization`]), not errors. Values in answers pass
//! [`crate::line::validate`]; optional fields are never sent empty; no
//! token, refresh token, code or secret reaches an error or a log line.
//!
//! Depends on `domain`, `line::client` and the rest of `line`.

use std::fmt;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{AccessToken, ChannelId, ChannelSecret, RefreshToken};
use crate::line::client::{LineClient, Params, RequestObserver, parse};
use crate::line::error::LineError;
use crate::line::types::Verification;
use crate::line::validate;
use crate::secret::Secret;

/// A failed LINE Login call: [`LineError`] over [`LoginEndpoint`].
pub type LoginError = LineError<LoginEndpoint>;

/// `grant_type` of the authorization code exchange.
pub const GRANT_TYPE_AUTHORIZATION_CODE: &str = "authorization_code";

/// `grant_type` of a refresh.
pub const GRANT_TYPE_REFRESH_TOKEN: &str = "refresh_token";

/// One LINE Login token operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoginEndpoint {
    /// `POST /oauth2/v2.1/token`, `grant_type=authorization_code`: the
    /// login's code for the user's first access and refresh tokens.
    ExchangeCode,
    /// `POST /oauth2/v2.1/token`, `grant_type=refresh_token`: a new access
    /// token (and maybe a new refresh token) for a refresh token.
    Refresh,
    /// `GET /oauth2/v2.1/verify`: is this user access token still accepted?
    Verify,
    /// `POST /oauth2/v2.1/revoke` with `access_token`.
    Revoke,
    /// `POST /oauth2/v2.1/revoke` with `refresh_token` instead: LINE's
    /// Android SDK logs out this way; not in LINE's reference.
    RevokeRefreshToken,
    /// `POST /user/v1/deauthorize`: withdraw the user's consent to the
    /// channel, with a channel token of the Login channel.
    Deauthorize,
}

impl LoginEndpoint {
    /// Every operation, in the order of the table above.
    pub const ALL: [LoginEndpoint; 6] = [
        Self::ExchangeCode,
        Self::Refresh,
        Self::Verify,
        Self::Revoke,
        Self::RevokeRefreshToken,
        Self::Deauthorize,
    ];

    /// The path below the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::ExchangeCode | Self::Refresh => "/oauth2/v2.1/token",
            Self::Verify => "/oauth2/v2.1/verify",
            Self::Revoke | Self::RevokeRefreshToken => "/oauth2/v2.1/revoke",
            Self::Deauthorize => "/user/v1/deauthorize",
        }
    }

    /// The HTTP method.
    pub fn method(self) -> Method {
        match self {
            Self::Verify => Method::GET,
            _ => Method::POST,
        }
    }

    /// True for the two token-endpoint grants: a lost answer may hold a
    /// token (and, in rotation, the only valid refresh token) nobody got.
    pub fn issues_tokens(self) -> bool {
        matches!(self, Self::ExchangeCode | Self::Refresh)
    }

    /// A stable snake_case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExchangeCode => "login_code",
            Self::Refresh => "login_refresh",
            Self::Verify => "login_verify",
            Self::Revoke => "login_revoke",
            Self::RevokeRefreshToken => "login_revoke_refresh",
            Self::Deauthorize => "login_deauthorize",
        }
    }
}

/// Shows `METHOD /path (label)`: the path alone is shared with channel-token
/// calls, the label tells which LINE Login operation it was.
impl fmt::Display for LoginEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.method(), self.path(), self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Wire types. Requests borrow their secrets and are not `Debug`.
// ---------------------------------------------------------------------------

/// Form of the authorization code exchange.
#[derive(Serialize)]
struct ExchangeCodeRequest<'a> {
    grant_type: &'static str,
    code: &'a str,
    redirect_uri: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code_verifier: Option<&'a str>,
}

/// Form of a refresh. `client_secret` is left out, not sent empty, when
/// the channel has none configured.
#[derive(Serialize)]
struct RefreshRequest<'a> {
    grant_type: &'static str,
    refresh_token: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
}

/// Form of both revoke calls: exactly one of the two tokens.
#[derive(Serialize)]
struct RevokeRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
}

/// JSON body of deauthorize.
#[derive(Serialize)]
struct DeauthorizeRequest<'a> {
    #[serde(rename = "userAccessToken")]
    user_access_token: &'a str,
}

/// The token endpoint's answer to both grants. Unknown fields are ignored
/// (LINE asks clients to tolerate new ones).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "a LINE Login token answer (a JSON object)")]
pub struct LoginTokenResponse {
    /// The user access token (30 days), checked by
    /// [`validate::access_token`].
    #[serde(deserialize_with = "validate::de_access_token")]
    pub access_token: AccessToken,
    /// Seconds until the access token expires, checked by
    /// [`validate::issued_lifetime`].
    #[serde(deserialize_with = "validate::de_issued_lifetime")]
    pub expires_in: i64,
    /// The refresh token LINE sent, `None` when the field was absent or
    /// empty. After a refresh, store it when it is `Some` and differs from
    /// the one sent (LINE may rotate it); keep the old one otherwise.
    #[serde(default, deserialize_with = "validate::de_optional_refresh_token")]
    pub refresh_token: Option<RefreshToken>,
    /// The granted scopes, space-separated (`email` is never listed).
    #[serde(default)]
    pub scope: Option<String>,
    /// `Bearer`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// The ID token (a JWT with the user's profile), with `openid` scope on
    /// the code exchange only. It holds personal data: it prints as a
    /// fingerprint.
    #[serde(default, deserialize_with = "de_optional_secret")]
    pub id_token: Option<Secret>,
}

fn de_optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(Secret::new))
}

/// What LINE said to a deauthorize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deauthorization {
    /// 204: the user's consent to the channel is withdrawn; every token of
    /// the grant stops working.
    Deauthorized,
    /// 400: LINE did not accept the user access token (`{"message":
    /// "invalid token"}` when the user was already deauthorized, or the
    /// token is dead).
    NotAccepted {
        /// LINE's text, for humans only.
        description: Option<String>,
        /// `X-Line-Request-Id` of the answer.
        request_id: Option<String>,
    },
}

// ---------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------

/// A client for LINE Login's user token endpoints. Cheap to clone; clones
/// share the wrapped [`LineClient`]'s pool and clock-skew record.
#[derive(Clone)]
pub struct LoginClient {
    line: LineClient,
    observer: Option<RequestObserver<LoginEndpoint>>,
}

impl fmt::Debug for LoginClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginClient")
            .field("base", &self.line.base_url())
            .field("observer", &self.observer.as_ref().map(|_| "set"))
            .finish()
    }
}

impl LoginClient {
    /// A LINE Login client sending through `line` (its base URL, pool,
    /// timeout and clock), reporting each request to `observer`.
    pub fn new(line: LineClient, observer: Option<RequestObserver<LoginEndpoint>>) -> Self {
        Self { line, observer }
    }

    /// The wrapped channel-token client.
    pub fn line(&self) -> &LineClient {
        &self.line
    }

    /// Exchanges a login's authorization code for the user's tokens
    /// (`POST /oauth2/v2.1/token`, `grant_type=authorization_code`). Web
    /// servers do this right after the login; linetokd's tests use it to
    /// set up a grant against the sandbox.
    ///
    /// # Errors
    /// [`LineError::is_invalid_grant`] for a used, expired or unknown code
    /// or a `redirect_uri` that does not match the login's;
    /// [`LineError::is_invalid_client`] for a wrong channel ID or secret;
    /// [`LineError::MaybeIssued`] for a success whose answer is unusable;
    /// transient classes otherwise.
    pub async fn exchange_code(
        &self,
        channel: &ChannelId,
        secret: &ChannelSecret,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<LoginTokenResponse, LoginError> {
        let op = LoginEndpoint::ExchangeCode;
        let form = ExchangeCodeRequest {
            grant_type: GRANT_TYPE_AUTHORIZATION_CODE,
            code,
            redirect_uri,
            client_id: channel.as_str(),
            client_secret: secret.expose(),
            code_verifier: code_verifier.filter(|v| !v.is_empty()),
        };
        let secrets = [code, secret.expose(), code_verifier.unwrap_or_default()];
        let answer = self.form(op, channel, &form, &secrets).await?;
        parse(op, answer)
    }

    /// Gets a new access token for a refresh token (`POST
    /// /oauth2/v2.1/token`, `grant_type=refresh_token`). `secret` is sent
    /// when given: LINE requires it for channels whose app type is Web app
    /// alone and ignores it otherwise. The answer's
    /// [`LoginTokenResponse::refresh_token`] replaces the stored one when it
    /// is `Some` and different.
    ///
    /// # Errors
    /// [`LineError::is_invalid_grant`]: the refresh token is dead, the user
    /// must log in again; [`LineError::is_invalid_client`]: wrong channel
    /// ID or secret; [`LineError::is_rate_limited`]: 429;
    /// [`LineError::may_have_issued`]: LINE may have refreshed (and rotated
    /// the refresh token) without us getting the answer; transient classes
    /// otherwise.
    pub async fn refresh(
        &self,
        channel: &ChannelId,
        secret: Option<&ChannelSecret>,
        refresh_token: &RefreshToken,
    ) -> Result<LoginTokenResponse, LoginError> {
        let op = LoginEndpoint::Refresh;
        let form = RefreshRequest {
            grant_type: GRANT_TYPE_REFRESH_TOKEN,
            refresh_token: refresh_token.expose(),
            client_id: channel.as_str(),
            client_secret: secret.map(ChannelSecret::expose),
        };
        let secrets = [refresh_token.expose(), secret.map_or("", |s| s.expose())];
        let answer = self.form(op, channel, &form, &secrets).await?;
        parse(op, answer)
    }

    /// Asks LINE whether a user access token is still accepted (`GET
    /// /oauth2/v2.1/verify?access_token=`). Before trusting a
    /// [`Verification::Valid`] check its `client_id` is the Login channel
    /// and `expires_in > 0`.
    ///
    /// # Errors
    /// Only when the question got no answer: transient classes, or a
    /// permanent status other than 400. A dead token (expired, revoked,
    /// unknown) is `Ok(Verification::Rejected)`.
    pub async fn verify(&self, token: &AccessToken) -> Result<Verification, LoginError> {
        self.line
            .verify_with(LoginEndpoint::Verify, token, self.observer.as_ref())
            .await
    }

    /// Revokes a user access token (`POST /oauth2/v2.1/revoke`,
    /// `access_token`, `client_id`, and `client_secret` when given, under
    /// the same app-type rule as [`Self::refresh`]). 200 with an empty body
    /// is success. The grant's refresh token keeps working.
    ///
    /// # Errors
    /// [`LineError::is_invalid_client`] for a wrong channel ID or secret;
    /// [`LineError::Permanent`] for a malformed token; transient otherwise.
    pub async fn revoke(
        &self,
        channel: &ChannelId,
        secret: Option<&ChannelSecret>,
        token: &AccessToken,
    ) -> Result<(), LoginError> {
        let form = RevokeRequest {
            access_token: Some(token.expose()),
            refresh_token: None,
            client_id: channel.as_str(),
            client_secret: secret.map(ChannelSecret::expose),
        };
        let secrets = [token.expose(), secret.map_or("", |s| s.expose())];
        self.form(LoginEndpoint::Revoke, channel, &form, &secrets)
            .await
            .map(drop)
    }

    /// Revokes a grant by its refresh token (`POST /oauth2/v2.1/revoke`
    /// with `refresh_token` and `client_id`, no `access_token`), the form
    /// LINE's Android SDK logs out with; not in LINE's reference, so treat
    /// a refusal as "unknown", not as proof the grant lives. `secret` is
    /// sent when given.
    ///
    /// # Errors
    /// As [`Self::revoke`].
    pub async fn revoke_refresh_token(
        &self,
        channel: &ChannelId,
        secret: Option<&ChannelSecret>,
        refresh_token: &RefreshToken,
    ) -> Result<(), LoginError> {
        let form = RevokeRequest {
            access_token: None,
            refresh_token: Some(refresh_token.expose()),
            client_id: channel.as_str(),
            client_secret: secret.map(ChannelSecret::expose),
        };
        let secrets = [refresh_token.expose(), secret.map_or("", |s| s.expose())];
        self.form(LoginEndpoint::RevokeRefreshToken, channel, &form, &secrets)
            .await
            .map(drop)
    }

    /// Withdraws the user's consent to the Login channel (`POST
    /// /user/v1/deauthorize`, `Authorization: Bearer <channel_token>`, JSON
    /// `{"userAccessToken": ...}`). `channel_token` is a v2.1 or stateless
    /// channel access token of the same Login channel. Do it before
    /// revoking the user's access token: deauthorize needs a token LINE
    /// still accepts.
    ///
    /// # Errors
    /// Only when the question got no answer: a 401/403 (the channel token
    /// is not accepted) is [`LineError::Permanent`]; transient classes
    /// otherwise. A 400 (`invalid token`, e.g. already deauthorized) is
    /// `Ok(Deauthorization::NotAccepted)`.
    pub async fn deauthorize(
        &self,
        channel: &ChannelId,
        channel_token: &AccessToken,
        user_token: &AccessToken,
    ) -> Result<Deauthorization, LoginError> {
        let op = LoginEndpoint::Deauthorize;
        let body = DeauthorizeRequest {
            user_access_token: user_token.expose(),
        };
        let params = Params::BearerJson {
            bearer: channel_token.expose(),
            body: &body,
        };
        let secrets = [channel_token.expose(), user_token.expose()];
        match self
            .line
            .send(op, Some(channel), params, &secrets, self.observer.as_ref())
            .await
        {
            Ok(_) => Ok(Deauthorization::Deauthorized),
            Err(LineError::Permanent {
                status: StatusCode::BAD_REQUEST,
                body,
                request_id,
                ..
            }) => Ok(Deauthorization::NotAccepted {
                description: body.description().map(str::to_owned),
                request_id,
            }),
            Err(e) => Err(e),
        }
    }

    /// One form POST about `channel`.
    async fn form<P: Serialize>(
        &self,
        op: LoginEndpoint,
        channel: &ChannelId,
        form: &P,
        secrets: &[&str],
    ) -> Result<crate::line::client::Answer, LoginError> {
        self.line
            .send(
                op,
                Some(channel),
                Params::Form(form),
                secrets,
                self.observer.as_ref(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_tolerate_missing_empty_and_new_fields() {
        let full: LoginTokenResponse = serde_json::from_str(
            r#"{"access_token":"bNl4YEFPI/hjFWhTqexp4MuEw5YPs","expires_in":2592000,
                "id_token":"eyJhbGciOiJIUzI1NiJ9.e30.sig","refresh_token":"Aa1FdeggRhTnPNNpxr8p",
                "scope":"profile openid","token_type":"Bearer","new_field":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            full.refresh_token.as_ref().map(RefreshToken::expose),
            Some("Aa1FdeggRhTnPNNpxr8p")
        );
        assert_eq!(full.scope.as_deref(), Some("profile openid"));
        assert!(full.id_token.is_some());
        let shown = format!("{full:?}");
        for value in ["bNl4YEFPI", "Aa1Fdegg", "eyJhbGciOiJIUzI1NiJ9.e30"] {
            assert!(!shown.contains(value), "{shown}");
        }
        for body in [
            r#"{"access_token":"a","expires_in":60}"#,
            r#"{"access_token":"a","expires_in":60,"refresh_token":""}"#,
            r#"{"access_token":"a","expires_in":60,"refresh_token":null}"#,
        ] {
            let r: LoginTokenResponse = serde_json::from_str(body).unwrap();
            assert_eq!(r.refresh_token, None, "{body}");
        }
    }

    #[test]
    fn answers_with_values_not_shaped_like_lines_are_refused() {
        for body in [
            r#"{"expires_in":60}"#,
            r#"{"access_token":"","expires_in":60}"#,
            r#"{"access_token":"a b","expires_in":60}"#,
            r#"{"access_token":"a","expires_in":0}"#,
            r#"{"access_token":"a","expires_in":60,"refresh_token":"r\nx"}"#,
        ] {
            assert!(
                serde_json::from_str::<LoginTokenResponse>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn labels_paths_and_display() {
        assert_eq!(LoginEndpoint::Refresh.as_str(), "login_refresh");
        assert_eq!(
            LoginEndpoint::Refresh.to_string(),
            "POST /oauth2/v2.1/token (login_refresh)"
        );
        assert_eq!(
            LoginEndpoint::Verify.to_string(),
            "GET /oauth2/v2.1/verify (login_verify)"
        );
        let issuing: Vec<_> = LoginEndpoint::ALL
            .into_iter()
            .filter(|e| e.issues_tokens())
            .collect();
        assert_eq!(
            issuing,
            [LoginEndpoint::ExchangeCode, LoginEndpoint::Refresh]
        );
    }

    #[test]
    fn optional_fields_are_left_out_not_sent_empty() {
        let form = RefreshRequest {
            grant_type: GRANT_TYPE_REFRESH_TOKEN,
            refresh_token: "r",
            client_id: "1",
            client_secret: None,
        };
        let request = reqwest::Client::new()
            .post("http://127.0.0.1:9/")
            .form(&form)
            .build()
            .unwrap();
        let body = request.body().and_then(reqwest::Body::as_bytes).unwrap();
        assert_eq!(
            body,
            b"grant_type=refresh_token&refresh_token=r&client_id=1"
        );
    }
}
