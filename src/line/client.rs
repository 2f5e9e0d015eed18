//! The typed async client for LINE's channel access token endpoints.
//!
//! One [`LineClient`] per daemon: it holds one `reqwest` connection pool
//! (rustls), a per-request timeout and the clock. Each method is one
//! operation of `channel-access-token.yml` ([`Endpoint`]), takes domain types
//! and returns the contract's answer types ([`crate::line::types`]) or a
//! classified [`LineError`]. Where LINE wants a client assertion, the method
//! takes the channel's [`AssertionSigner`] and signs a fresh one from
//! [`crate::clock::Clock::now`] for that request alone (LINE judges `exp` by its clock, so
//! an assertion is never reused).
//!
//! What it guarantees:
//! - exact paths, methods and snake_case parameter names (checked against
//!   the OpenAPI file by `tests/it/contract.rs`); GET endpoints send a query
//!   string, POST endpoints a form body; no `Authorization` header;
//! - revoke's empty 200 body is success, never parsed;
//! - no token, secret or assertion reaches an error, a log line or the
//!   observer; errors drop `reqwest`'s URL, which holds the token on verify;
//! - each request is logged at debug with endpoint, status, latency and
//!   `X-Line-Request-Id`; each answer's `Date` updates the clock skew.
//!
//! It never retries: retry policy belongs to the rotator, which knows the
//! deadlines. Redirects are not followed (LINE does not redirect these
//! endpoints, and a redirect would carry credentials to another URL).
//!
//! Depends on `domain`, `clock`, `line::jwt` and the rest of `line`.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::clock::SharedClock;
use crate::domain::{AccessToken, ChannelId, ChannelSecret, KeyId};
use crate::line::deadline;
use crate::line::endpoint::Endpoint;
use crate::line::error::{self, ErrorBody, LineError};
use crate::line::headers;
use crate::line::jwt::{AssertionSigner, CLIENT_ASSERTION_TYPE};
use crate::line::operation::Operation;
use crate::line::skew::SkewTracker;
use crate::line::types::{
    AccessTokenParam, ChannelAccessTokenKeyIdsQuery, ChannelAccessTokenKeyIdsResponse,
    GRANT_TYPE_CLIENT_CREDENTIALS, IssueChannelAccessTokenResponse,
    IssueChannelTokenByClientSecretRequest, IssueChannelTokenByJwtRequest,
    IssueShortLivedChannelAccessTokenResponse, IssueStatelessChannelAccessTokenResponse,
    RevokeChannelTokenByJwtRequest, Verification,
};

/// LINE's API host, the OpenAPI file's `servers` entry.
pub const DEFAULT_BASE_URL: &str = "https://api.line.me";

/// The per-request timeout unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer body read. LINE's answers are a few hundred bytes (30
/// key IDs at most); anything bigger is not LINE and is not buffered.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Called once per request with the endpoint, the HTTP status (`None` when
/// LINE did not answer) and the latency; the metrics layer counts requests
/// and fills a histogram with it. It must be cheap: it runs inline.
///
/// `E` is the API's operation enum: [`Endpoint`] for [`LineClient`]'s
/// channel-token calls (the default), [`crate::line::login::LoginEndpoint`]
/// for [`crate::line::login::LoginClient`]'s.
pub type RequestObserver<E = Endpoint> = Arc<dyn Fn(E, Option<u16>, Duration) + Send + Sync>;

/// A signed issue assertion, kept until it is sent
/// ([`LineClient::sign_issue_v21`]). It can get a token from LINE until
/// `expires_at`, so it is a secret: its `Debug` shows only the expiry.
pub struct SignedAssertion {
    jwt: String,
    /// The assertion's `exp`: LINE refuses it from then on.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl fmt::Debug for SignedAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedAssertion")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// How to reach LINE.
#[derive(Clone)]
pub struct LineClientConfig {
    /// Scheme, host, port and optional path prefix, without a trailing path
    /// of LINE's (e.g. `https://api.line.me`, or the sandbox's
    /// `http://127.0.0.1:9470`). Proxies follow the usual `HTTPS_PROXY`
    /// environment variables.
    pub base_url: String,
    /// The whole-request deadline: connect, send, wait and read the answer.
    pub timeout: Duration,
    /// Optional per-request hook for metrics.
    pub observer: Option<RequestObserver>,
}

impl Default for LineClientConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            observer: None,
        }
    }
}

impl fmt::Debug for LineClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineClientConfig")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("observer", &self.observer.as_ref().map(|_| "set"))
            .finish()
    }
}

/// Why a [`LineClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    /// The base URL is unusable.
    #[error("LINE base URL {url:?} is invalid: {reason}")]
    BaseUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A zero timeout would fail every request.
    #[error("LINE request timeout must be more than zero")]
    ZeroTimeout,
    /// The HTTP client (TLS setup) could not be built.
    #[error("could not build the HTTP client for LINE")]
    Http(#[source] reqwest::Error),
}

/// A client for LINE's channel access token endpoints. Cheap to clone: the
/// clones share one connection pool and one clock-skew record.
#[derive(Clone)]
pub struct LineClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The whole-request deadline ([`LineClientConfig::timeout`]).
    timeout: Duration,
    /// The base URL without a trailing slash; paths start with one.
    base: String,
    clock: SharedClock,
    observer: Option<RequestObserver>,
    skew: SkewTracker,
}

impl fmt::Debug for LineClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineClient")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// A 2xx answer, read but not yet parsed.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
    pub(crate) request_id: Option<String>,
}

/// How a request carries its parameters.
pub(crate) enum Params<'a, P: ?Sized> {
    /// A query string (GET endpoints).
    Query(&'a P),
    /// An `application/x-www-form-urlencoded` body (POST endpoints).
    Form(&'a P),
    /// A JSON body with `Authorization: Bearer` (LINE Login's deauthorize,
    /// the one call here that authenticates with a channel token).
    BearerJson {
        /// The bearer token; also one of the call's scrubbed secrets.
        bearer: &'a str,
        /// The JSON body.
        body: &'a P,
    },
}

impl LineClient {
    /// A client for the LINE API at `config.base_url`, reading "now" from
    /// `clock` (for assertions, `Retry-After` dates and the skew).
    ///
    /// # Errors
    /// [`ClientSetupError`] when the base URL is not an absolute http(s) URL
    /// without query or fragment, the timeout is zero, or TLS cannot be set up.
    pub fn new(config: LineClientConfig, clock: SharedClock) -> Result<Self, ClientSetupError> {
        let base = validate_base_url(&config.base_url)?;
        if config.timeout.is_zero() {
            return Err(ClientSetupError::ZeroTimeout);
        }
        // The whole-request deadline is `deadline::within`'s, not reqwest's
        // (which fails a request resumed after a pause even when its
        // answer has arrived); connecting keeps reqwest's own.
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("linetokd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientSetupError::Http(e.without_url()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                timeout: config.timeout,
                base,
                clock,
                observer: config.observer,
                skew: SkewTracker::default(),
            }),
        })
    }

    /// The base URL requests go to (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Our clock minus LINE's, from the `Date` header of the last answer
    /// that had one. Positive means our clock is ahead.
    pub fn last_clock_skew(&self) -> Option<chrono::Duration> {
        self.inner.skew.last()
    }

    // -- v2.1 ---------------------------------------------------------------

    /// Issues a v2.1 token for the signer's channel that lives `lifetime`
    /// (`POST /oauth2/v2.1/token`, assertion with `token_exp`).
    ///
    /// # Errors
    /// [`LineError::Assertion`] for a lifetime outside 1 s..=30 days;
    /// [`LineError::TooManyTokens`] when the channel has 30 valid tokens;
    /// [`LineError::Permanent`] for a rejected assertion (400) or an
    /// unregistered key (404); [`LineError::MaybeIssued`] for a success
    /// whose answer is unusable (off-contract, a key ID or token not shaped
    /// like LINE's, `expires_in` outside 1 s..=30 days); transient classes
    /// otherwise. Check [`LineError::may_have_issued`] on every error.
    pub async fn issue_v21(
        &self,
        signer: &AssertionSigner,
        lifetime: chrono::Duration,
    ) -> Result<IssueChannelAccessTokenResponse, LineError> {
        let assertion = self.sign_issue_v21(signer, lifetime)?;
        self.issue_v21_signed(signer, &assertion).await
    }

    /// Signs the assertion of a v2.1 issue now, without sending it: a
    /// caller that must journal the issue first (under `[ha]`, with the
    /// assertion's expiry, docs/design.md §14.3) signs, records, then sends
    /// exactly this assertion with [`LineClient::issue_v21_signed`].
    ///
    /// # Errors
    /// [`LineError::Assertion`] for a lifetime outside 1 s..=30 days.
    pub fn sign_issue_v21(
        &self,
        signer: &AssertionSigner,
        lifetime: chrono::Duration,
    ) -> Result<SignedAssertion, LineError> {
        let now = self.inner.clock.now();
        let exp = signer
            .claims(now, Some(lifetime))
            .map_err(|source| LineError::Assertion {
                endpoint: Endpoint::IssueV21,
                source,
            })?
            .exp;
        let jwt = signer
            .sign(now, Some(lifetime))
            .map_err(|source| LineError::Assertion {
                endpoint: Endpoint::IssueV21,
                source,
            })?;
        Ok(SignedAssertion {
            jwt,
            expires_at: chrono::DateTime::from_timestamp(exp, 0).unwrap_or(now),
        })
    }

    /// [`LineClient::issue_v21`] with an assertion signed before
    /// ([`LineClient::sign_issue_v21`]).
    ///
    /// # Errors
    /// As [`LineClient::issue_v21`].
    pub async fn issue_v21_signed(
        &self,
        signer: &AssertionSigner,
        assertion: &SignedAssertion,
    ) -> Result<IssueChannelAccessTokenResponse, LineError> {
        let endpoint = Endpoint::IssueV21;
        let form = IssueChannelTokenByJwtRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIALS,
            client_assertion_type: CLIENT_ASSERTION_TYPE,
            client_assertion: &assertion.jwt,
        };
        let answer = self
            .call(
                endpoint,
                Some(signer.channel_id()),
                &form,
                &[&assertion.jwt],
            )
            .await?;
        parse(endpoint, answer)
    }

    /// Asks LINE whether a v2.1 token is still accepted
    /// (`GET /oauth2/v2.1/verify?access_token=`).
    ///
    /// # Errors
    /// Only when the question got no answer: transient classes, or a
    /// permanent status other than 400. A dead token is
    /// `Ok(Verification::Rejected)`.
    pub async fn verify_v21(&self, token: &AccessToken) -> Result<Verification, LineError> {
        self.verify(Endpoint::VerifyV21, token).await
    }

    /// The key IDs of every valid v2.1 token on the signer's channel, ours
    /// and anyone else's (`GET /oauth2/v2.1/tokens/kid`).
    ///
    /// # Errors
    /// [`LineError::Permanent`] for a rejected assertion (400) or an
    /// unregistered key (404); transient classes otherwise, including a
    /// list with any key ID not shaped like LINE's
    /// ([`crate::line::validate::key_id`]): none of a half-trusted list is
    /// returned.
    pub async fn valid_key_ids(&self, signer: &AssertionSigner) -> Result<Vec<KeyId>, LineError> {
        let endpoint = Endpoint::ValidKeyIdsV21;
        let assertion = self.sign(endpoint, signer, None)?;
        let query = ChannelAccessTokenKeyIdsQuery {
            client_assertion_type: CLIENT_ASSERTION_TYPE,
            client_assertion: &assertion,
        };
        let answer = self
            .call(endpoint, Some(signer.channel_id()), &query, &[&assertion])
            .await?;
        parse::<ChannelAccessTokenKeyIdsResponse, _>(endpoint, answer).map(|r| r.kids)
    }

    /// Revokes a v2.1 token (`POST /oauth2/v2.1/revoke`). LINE answers 200
    /// with an empty body, also for a token that is already gone.
    ///
    /// # Errors
    /// [`LineError::Permanent`] for a wrong channel ID or secret or a
    /// malformed token; transient classes otherwise.
    pub async fn revoke_v21(
        &self,
        channel_id: &ChannelId,
        secret: &ChannelSecret,
        token: &AccessToken,
    ) -> Result<(), LineError> {
        let form = RevokeChannelTokenByJwtRequest {
            client_id: channel_id.as_str(),
            client_secret: secret.expose(),
            access_token: token.expose(),
        };
        let secrets = [secret.expose(), token.expose()];
        self.call(Endpoint::RevokeV21, Some(channel_id), &form, &secrets)
            .await
            .map(drop)
    }

    // -- short-lived ----------------------------------------------------------

    /// Issues a short-lived (30 day) token with the channel secret
    /// (`POST /v2/oauth/accessToken`). The 31st on a channel silently
    /// revokes the oldest.
    ///
    /// # Errors
    /// [`LineError::Permanent`] for a wrong channel ID or secret (400);
    /// [`LineError::RateLimited`] beyond LINE's rate; transient otherwise.
    pub async fn issue_short_lived(
        &self,
        channel_id: &ChannelId,
        secret: &ChannelSecret,
    ) -> Result<IssueShortLivedChannelAccessTokenResponse, LineError> {
        let endpoint = Endpoint::IssueShortLived;
        let form = IssueChannelTokenByClientSecretRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id: channel_id.as_str(),
            client_secret: secret.expose(),
        };
        let answer = self
            .call(endpoint, Some(channel_id), &form, &[secret.expose()])
            .await?;
        parse(endpoint, answer)
    }

    /// Asks LINE whether a short-lived or long-lived token is still accepted
    /// (`POST /v2/oauth/verify`, a form, unlike v2.1's GET).
    ///
    /// # Errors
    /// As [`Self::verify_v21`].
    pub async fn verify_short_lived(&self, token: &AccessToken) -> Result<Verification, LineError> {
        self.verify(Endpoint::VerifyShortLived, token).await
    }

    /// Revokes a short-lived or long-lived token (`POST /v2/oauth/revoke`;
    /// no secret needed). 200 with an empty body is success.
    ///
    /// # Errors
    /// [`LineError::Permanent`] for a malformed token; transient otherwise.
    pub async fn revoke_short_lived(&self, token: &AccessToken) -> Result<(), LineError> {
        let form = AccessTokenParam {
            access_token: token.expose(),
        };
        self.call(Endpoint::RevokeShortLived, None, &form, &[token.expose()])
            .await
            .map(drop)
    }

    // -- stateless ------------------------------------------------------------

    /// Issues a 15-minute stateless token with a client assertion
    /// (`POST /oauth2/v3/token`, JWT form; the assertion has no `token_exp`).
    ///
    /// # Errors
    /// [`LineError::Permanent`] for a rejected assertion (400) or an
    /// unregistered key (404); transient classes otherwise.
    pub async fn issue_stateless_with_assertion(
        &self,
        signer: &AssertionSigner,
    ) -> Result<IssueStatelessChannelAccessTokenResponse, LineError> {
        let endpoint = Endpoint::IssueStateless;
        let assertion = self.sign(endpoint, signer, None)?;
        let form = IssueChannelTokenByJwtRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIALS,
            client_assertion_type: CLIENT_ASSERTION_TYPE,
            client_assertion: &assertion,
        };
        let answer = self
            .call(endpoint, Some(signer.channel_id()), &form, &[&assertion])
            .await?;
        parse(endpoint, answer)
    }

    /// Issues a 15-minute stateless token with the channel secret
    /// (`POST /oauth2/v3/token`, secret form: only `grant_type`, `client_id`
    /// and `client_secret`, no empty assertion fields).
    ///
    /// # Errors
    /// [`LineError::Permanent`] for a wrong channel ID or secret (400);
    /// transient classes otherwise.
    pub async fn issue_stateless_with_secret(
        &self,
        channel_id: &ChannelId,
        secret: &ChannelSecret,
    ) -> Result<IssueStatelessChannelAccessTokenResponse, LineError> {
        let endpoint = Endpoint::IssueStateless;
        let form = IssueChannelTokenByClientSecretRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id: channel_id.as_str(),
            client_secret: secret.expose(),
        };
        let answer = self
            .call(endpoint, Some(channel_id), &form, &[secret.expose()])
            .await?;
        parse(endpoint, answer)
    }

    // -- plumbing -------------------------------------------------------------

    fn sign(
        &self,
        endpoint: Endpoint,
        signer: &AssertionSigner,
        token_exp: Option<chrono::Duration>,
    ) -> Result<String, LineError> {
        signer
            .sign(self.inner.clock.now(), token_exp)
            .map_err(|source| LineError::Assertion { endpoint, source })
    }

    /// Both verify endpoints: 400 is LINE's answer "not accepted".
    async fn verify(
        &self,
        endpoint: Endpoint,
        token: &AccessToken,
    ) -> Result<Verification, LineError> {
        let observer = self.inner.observer.as_ref();
        self.verify_with(endpoint, token, observer).await
    }

    /// A verify call of any API (LINE Login's is the same GET): 400 is
    /// LINE's answer "not accepted", every other failure an error.
    pub(crate) async fn verify_with<O: Operation>(
        &self,
        op: O,
        token: &AccessToken,
        observer: Option<&RequestObserver<O>>,
    ) -> Result<Verification, LineError<O>> {
        let params = AccessTokenParam {
            access_token: token.expose(),
        };
        let params = if op.method() == Method::GET {
            Params::Query(&params)
        } else {
            Params::Form(&params)
        };
        match self
            .send(op, None, params, &[token.expose()], observer)
            .await
        {
            Ok(answer) => parse(op, answer).map(Verification::Valid),
            Err(LineError::Permanent {
                status: StatusCode::BAD_REQUEST,
                body,
                request_id,
                ..
            }) => Ok(Verification::Rejected {
                code: body.code().map(str::to_owned),
                description: body.description().map(str::to_owned),
                request_id,
            }),
            Err(e) => Err(e),
        }
    }

    /// Sends one request of a channel-token [`Endpoint`] and classifies the
    /// answer. GET endpoints get `params` as a query string, POST endpoints
    /// as a form body. `secrets` are the credentials in `params`, scrubbed
    /// from whatever LINE echoes. `channel` is the channel the request is
    /// about, when the request names it, for the log line (a verify names
    /// only the token).
    async fn call<P: Serialize + ?Sized>(
        &self,
        endpoint: Endpoint,
        channel: Option<&ChannelId>,
        params: &P,
        secrets: &[&str],
    ) -> Result<Answer, LineError> {
        let params = if endpoint.method() == Method::GET {
            Params::Query(params)
        } else {
            Params::Form(params)
        };
        let observer = self.inner.observer.as_ref();
        self.send(endpoint, channel, params, secrets, observer)
            .await
    }

    /// Sends one request of any API's operation: the one path every call
    /// takes, so every call gets the same timeout, body cap, skew check,
    /// debug line, observer call and classification. `observer` is the
    /// caller's hook for this API's operations.
    pub(crate) async fn send<O: Operation, P: Serialize + ?Sized>(
        &self,
        op: O,
        channel: Option<&ChannelId>,
        params: Params<'_, P>,
        secrets: &[&str],
        observer: Option<&RequestObserver<O>>,
    ) -> Result<Answer, LineError<O>> {
        let inner = &*self.inner;
        let url = format!("{}{}", inner.base, op.path());
        let request = inner.http.request(op.method(), url);
        let request = match params {
            Params::Query(p) => request.query(p),
            Params::Form(p) => request.form(p),
            Params::BearerJson { bearer, body } => request.bearer_auth(bearer).json(body),
        };
        let started = Instant::now();
        // What LINE's answer said before its body, kept outside the
        // exchange: a deadline that passes while the body is read still
        // knows the status (a 2xx cut short may have issued; a 429 did not).
        let head = OnceLock::new();
        let outcome = deadline::within(
            inner.timeout,
            op.label(),
            self.exchange(op, request, secrets, &head),
        )
        .await
        .unwrap_or_else(|| Err(timed_out(op, head.into_inner())));
        let latency = started.elapsed();
        let (status, request_id) = match &outcome {
            Ok(answer) => (Some(answer.status), answer.request_id.as_deref()),
            Err(e) => (e.status(), e.request_id()),
        };
        let status_code = status.map(|s| s.as_u16());
        tracing::debug!(
            channel = channel.map(ChannelId::as_str),
            endpoint = op.label(),
            status = status_code,
            latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            request_id,
            "LINE request"
        );
        if let Some(observer) = observer {
            observer(op, status_code, latency);
        }
        outcome
    }

    async fn exchange<O: Operation>(
        &self,
        endpoint: O,
        request: reqwest::RequestBuilder,
        secrets: &[&str],
        head: &OnceLock<Head>,
    ) -> Result<Answer, LineError<O>> {
        let inner = &*self.inner;
        let mut response = request
            .send()
            .await
            .map_err(|e| error::transport(endpoint, e, None))?;
        let status = response.status();
        let request_id = headers::request_id(response.headers());
        let now = inner.clock.now();
        if let Some(line_now) = headers::date(response.headers())
            && let Some(skew) = inner.skew.observe(now, line_now)
        {
            tracing::warn!(
                skew_seconds = skew.num_seconds(),
                "the local clock is {}s {} LINE's; assertions may be refused as expired or too \
                 far ahead: check NTP",
                skew.num_seconds().abs(),
                if skew > chrono::Duration::zero() {
                    "ahead of"
                } else {
                    "behind"
                },
            );
        }
        let retry_after = headers::retry_after(response.headers(), now);
        let _ = head.set(Head {
            status,
            request_id: request_id.clone(),
            retry_after,
        });
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);

        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        let reason = format!("the body is larger than {MAX_BODY_BYTES} bytes");
                        return Err(if status.is_success() {
                            error::unread_success(endpoint, status, reason, request_id, None)
                        } else {
                            // The status is LINE's answer; the body is noise.
                            let body = ErrorBody::TooLarge;
                            error::classify(endpoint, status, body, retry_after, request_id)
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                // The status arrived, so LINE answered: a success cut off
                // may still have issued, an error status did not.
                Err(e) if status.is_success() => {
                    let reason = "the connection broke while the body was read".to_owned();
                    return Err(error::unread_success(
                        endpoint,
                        status,
                        reason,
                        request_id,
                        Some(e),
                    ));
                }
                Err(_) => {
                    return Err(error::classify(
                        endpoint,
                        status,
                        ErrorBody::Cut,
                        retry_after,
                        request_id,
                    ));
                }
            }
        }

        if status.is_success() {
            Ok(Answer {
                status,
                body,
                request_id,
            })
        } else {
            let body = ErrorBody::parse(content_type.as_deref(), &body, secrets);
            Err(error::classify(
                endpoint,
                status,
                body,
                retry_after,
                request_id,
            ))
        }
    }
}

/// The part of LINE's answer that comes before its body.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    request_id: Option<String>,
    retry_after: Option<Duration>,
}

/// The error of a request whose deadline passed: before LINE's answer
/// began, a timeout (on an issue call, LINE may have issued); while its
/// body was read, what the status says, as for a body cut off.
fn timed_out<O: Operation>(op: O, head: Option<Head>) -> LineError<O> {
    match head {
        None => error::timed_out(op),
        Some(head) if head.status.is_success() => error::unread_success(
            op,
            head.status,
            "the request deadline passed while the body was read".to_owned(),
            head.request_id,
            None,
        ),
        Some(head) => error::classify(
            op,
            head.status,
            ErrorBody::Cut,
            head.retry_after,
            head.request_id,
        ),
    }
}

/// Parses a 2xx body into the contract's answer type, whose key IDs,
/// tokens and lifetimes [`crate::line::validate`] checks on the way.
pub(crate) fn parse<T: DeserializeOwned, O: Operation>(
    endpoint: O,
    answer: Answer,
) -> Result<T, LineError<O>> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        error::unreadable(endpoint, answer.status, &answer.body, &e, answer.request_id)
    })
}

/// Checks the base URL and returns it without a trailing slash.
fn validate_base_url(raw: &str) -> Result<String, ClientSetupError> {
    let bad = |reason: &str| ClientSetupError::BaseUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be https (or http for the sandbox)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not carry credentials"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_normalised() {
        assert_eq!(
            validate_base_url("https://api.line.me").unwrap(),
            "https://api.line.me"
        );
        assert_eq!(
            validate_base_url("https://api.line.me/").unwrap(),
            "https://api.line.me"
        );
        assert_eq!(
            validate_base_url("http://127.0.0.1:9470/line/").unwrap(),
            "http://127.0.0.1:9470/line"
        );
        for bad in [
            "",
            "api.line.me",
            "ftp://api.line.me",
            "https://api.line.me/?x=1",
            "https://api.line.me/#f",
            "https://user:pw@api.line.me",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }
}
