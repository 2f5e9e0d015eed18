//! Every way a call to LINE can fail, classified for the caller.
//!
//! The rotator decides what to do next from the class alone (docs/design.md
//! section 5):
//!
//! | class | variant | method | LINE issued a token? |
//! |---|---|---|---|
//! | retry soon with backoff | [`LineError::Transient`] | [`LineError::is_transient`] | no, except a timeout or broken connection on an issue call ([`LineError::may_have_issued`]) |
//! | wait as LINE asks | [`LineError::RateLimited`] | [`LineError::retry_after`] (capped at [`MAX_RETRY_AFTER`]) | no |
//! | free capacity first | [`LineError::TooManyTokens`] | [`LineError::is_channel_full`] | no |
//! | LINE said yes, we cannot use it | [`LineError::MaybeIssued`] | [`LineError::may_have_issued`] | maybe |
//! | alert and retry slowly | [`LineError::Permanent`], [`LineError::Assertion`] | none of the above | no |
//!
//! The class comes from the HTTP status (and, once, from which of LINE's two
//! body shapes a 400 has), never from the wording of a description: LINE
//! words the same error differently on different pages. An answer with an
//! error status (4xx, 5xx, 429) means LINE did not issue; a success whose body
//! is unusable, or no answer at all after the request left, means it may have.
//!
//! `LineError<E>` is generic over the operation enum ([`Operation`]):
//! `LineError` alone is the channel-token API's ([`Endpoint`]), and
//! [`crate::line::login::LoginError`] the same type over LINE Login's
//! operations. LINE Login adds two classes read from the OAuth `error` code
//! of a permanent 4xx, never from its wording:
//! [`LineError::is_invalid_grant`] (the refresh token is dead: the user must
//! log in again) and [`LineError::is_invalid_client`] (the channel ID or
//! secret is wrong).
//!
//! Invariant: no error shows a token, a channel secret or an assertion, and
//! none carries one but [`LineError::MaybeIssued`], which keeps the token an
//! unusable answer brought (`carried`) so the caller can revoke it (never
//! displayed; its `Debug` is a fingerprint). Every `Display` is words for
//! an operator (endpoint, status, LINE's request
//! ID), never a URL. `reqwest` errors are stored without their URL (verify
//! puts the token in the query string, kid listing the assertion), raw bodies
//! are never kept, and the texts LINE sends back are shortened, stripped of
//! control characters and scrubbed of every secret the request carried.
//!
//! Depends on `domain`, `line::endpoint`, `line::operation`, `line::types`,
//! `line::jwt` (its error).

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;

use crate::domain::{AccessToken, KeyId};
use crate::line::endpoint::Endpoint;
use crate::line::jwt::JwtError;
use crate::line::operation::Operation;
use crate::line::types::{ErrorResponse, MessageErrorResponse};
use crate::line::validate;

/// Longest text from LINE kept in an error. LINE's descriptions are one
/// short sentence; more than this is not a description.
const MAX_TEXT_LEN: usize = 200;

/// The longest wait [`LineError::retry_after`] reports, whatever LINE's
/// `Retry-After` says. LINE's rate limits reset within minutes; a
/// `Retry-After: 99999999` (three years) from a confused proxy or a hostile
/// server would otherwise park a channel's rotation until its tokens are
/// long dead. An hour keeps LINE's request honoured in every plausible case
/// and bounds the damage of an implausible one; the rotator also caps any
/// wait at the token's deadline.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// A failed call to LINE.
#[derive(Debug, thiserror::Error)]
pub enum LineError<E = Endpoint> {
    /// LINE could not be reached, or answered in a way that may well change
    /// on retry: connect error, timeout, broken connection, 5xx or 408, or a
    /// success of a call that issues nothing whose body does not match the
    /// contract (including a key-ID list with a malformed key ID).
    ///
    /// A timeout or broken connection on an issue call may have left a token
    /// issued: see [`LineError::may_have_issued`].
    #[error("{endpoint}: {cause}{}", RequestIdNote(request_id))]
    Transient {
        /// The operation that failed.
        endpoint: E,
        /// What went wrong.
        cause: TransientCause,
        /// LINE's `Retry-After` as sent, if it sent one with a 5xx; read it
        /// through [`LineError::retry_after`], which caps it.
        retry_after: Option<Duration>,
        /// `X-Line-Request-Id`, when LINE answered at all.
        request_id: Option<String>,
        /// The transport error, stripped of its URL.
        #[source]
        source: Option<TransportError>,
    },

    /// LINE answered 429 Too Many Requests.
    #[error(
        "{endpoint}: LINE is rate limiting this channel (429 Too Many Requests, {}){}",
        RetryAfterNote(retry_after),
        RequestIdNote(request_id)
    )]
    RateLimited {
        /// The operation that failed.
        endpoint: E,
        /// How long LINE asked us to wait (`Retry-After`) as sent, if it
        /// said; read it through [`LineError::retry_after`], which caps it.
        retry_after: Option<Duration>,
        /// What the body said.
        body: ErrorBody,
        /// `X-Line-Request-Id`.
        request_id: Option<String>,
    },

    /// LINE refused to issue a v2.1 token because the channel already has
    /// 30 valid ones ([`LineError::is_channel_full`]). Retrying will not
    /// help until a token is revoked or expires.
    #[error(
        "{endpoint}: LINE refused to issue a token: the channel already has the maximum of 30 \
         valid v2.1 tokens (400 Bad Request with {body}){}",
        RequestIdNote(request_id)
    )]
    TooManyTokens {
        /// Always [`Endpoint::IssueV21`] (see [`Operation::refuses_when_full`]).
        endpoint: E,
        /// What the body said.
        body: ErrorBody,
        /// `X-Line-Request-Id`.
        request_id: Option<String>,
    },

    /// LINE answered an issue call with success (2xx), but the answer cannot
    /// be used: a missing or mistyped field, a key ID or token not shaped
    /// like LINE's, an `expires_in` outside 1 s..=30 days, HTML, an empty or
    /// cut-off body. LINE may well have issued a token that nobody holds: it
    /// counts toward the channel's 30 until it expires, and the next
    /// reconcile sees its key ID as unknown. The caller must not treat this
    /// as "nothing happened" ([`LineError::may_have_issued`]).
    #[error(
        "{endpoint}: LINE answered {status} but the answer is unusable ({reason}), so LINE may \
         have issued a token that linetokd does not hold{}{}",
        KeyIdNote(key_id),
        RequestIdNote(request_id)
    )]
    MaybeIssued {
        /// The issue operation.
        endpoint: E,
        /// The 2xx status LINE answered with.
        status: StatusCode,
        /// What is wrong with the answer (no values from it but numbers).
        reason: String,
        /// The new token's key ID, when the answer had a well-formed one
        /// (the rest of it being unusable): the token to look for in the
        /// next key-ID list.
        key_id: Option<KeyId>,
        /// The token the answer carried, when it had a well-formed
        /// `access_token` (the rest of it being unusable): the caller can
        /// revoke it, so that nothing is left issued
        /// ([`LineError::take_carried_token`]). Never displayed.
        carried: Option<AccessToken>,
        /// `X-Line-Request-Id`.
        request_id: Option<String>,
        /// The transport error, when the connection broke mid-answer.
        #[source]
        source: Option<TransportError>,
    },

    /// LINE refused the request and will refuse it again until something
    /// changes: a bad assertion or unregistered key (400 `invalid_client`,
    /// 404), a wrong channel ID or secret, a malformed token.
    #[error(
        "{endpoint}: LINE refused the request: {status} with {body}{}",
        RequestIdNote(request_id)
    )]
    Permanent {
        /// The operation that failed.
        endpoint: E,
        /// LINE's status (4xx, or an unexpected 1xx/3xx).
        status: StatusCode,
        /// What the body said.
        body: ErrorBody,
        /// `X-Line-Request-Id`.
        request_id: Option<String>,
    },

    /// The client assertion could not be signed; nothing was sent.
    #[error("{endpoint}: could not build the client assertion")]
    Assertion {
        /// The operation that was not attempted.
        endpoint: E,
        /// Why signing failed.
        #[source]
        source: JwtError,
    },
}

impl<E: Operation> LineError<E> {
    /// The operation that failed.
    pub fn endpoint(&self) -> E {
        match self {
            Self::Transient { endpoint, .. }
            | Self::RateLimited { endpoint, .. }
            | Self::TooManyTokens { endpoint, .. }
            | Self::MaybeIssued { endpoint, .. }
            | Self::Permanent { endpoint, .. }
            | Self::Assertion { endpoint, .. } => *endpoint,
        }
    }

    /// True when the same request may succeed later without any change on
    /// our side: retry with backoff (honouring [`Self::retry_after`]). When
    /// [`Self::may_have_issued`] is also true, find out first whether LINE
    /// issued (list the key IDs) before issuing again.
    ///
    /// False for [`LineError::MaybeIssued`]: LINE said yes and its answer
    /// was unusable, which is not a blip; retrying at backoff pace could
    /// spend one of the channel's 30 tokens per attempt.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::RateLimited { .. })
    }

    /// True when LINE refused to issue because the channel already has 30
    /// valid v2.1 tokens: free capacity (revoke, or wait for an expiry)
    /// before issuing again. Recognised from the status (400) and the body's
    /// shape on the v2.1 issue endpoint, never from its wording.
    pub fn is_channel_full(&self) -> bool {
        matches!(self, Self::TooManyTokens { .. })
    }

    /// True when LINE may have issued a token although the call failed:
    ///
    /// - [`LineError::MaybeIssued`]: LINE answered an issue call with
    ///   success but the answer is unusable (off-contract, malformed key ID
    ///   or token, impossible `expires_in`, cut off);
    /// - a timeout or broken connection on an issue call: the request may
    ///   have reached LINE and only the answer was lost.
    ///
    /// False when nothing was sent (connect error, assertion not signed),
    /// when LINE answered with an error status (4xx, 5xx, 429: it did not
    /// issue), and for every call that issues nothing.
    pub fn may_have_issued(&self) -> bool {
        match self {
            Self::MaybeIssued { .. } => true,
            Self::Transient {
                endpoint,
                cause: TransientCause::Timeout | TransientCause::Network,
                ..
            } => endpoint.issues_tokens(),
            _ => false,
        }
    }

    /// The key ID of the token LINE may have issued, when its answer was
    /// unusable but had a well-formed `key_id` ([`LineError::MaybeIssued`]).
    pub fn issued_key_id(&self) -> Option<&KeyId> {
        match self {
            Self::MaybeIssued { key_id, .. } => key_id.as_ref(),
            _ => None,
        }
    }

    /// The token an unusable issue answer carried
    /// ([`LineError::MaybeIssued`]'s `carried`), taken out of the error.
    pub fn take_carried_token(&mut self) -> Option<AccessToken> {
        match self {
            Self::MaybeIssued { carried, .. } => carried.take(),
            _ => None,
        }
    }

    /// An unusable issue answer ([`LineError::MaybeIssued`]) whose token the
    /// caller revoked at LINE: nothing is left issued, so it is a transient
    /// failure like any unreadable answer, retried at that pace rather than
    /// the slow one of an attempt that may have issued. Any other error is
    /// returned as it is.
    #[must_use]
    pub fn revoked_what_it_carried(self) -> Self {
        match self {
            Self::MaybeIssued {
                endpoint,
                status,
                reason,
                request_id,
                source,
                ..
            } => Self::Transient {
                endpoint,
                cause: TransientCause::UnreadableAnswer {
                    status,
                    reason: format!(
                        "{reason}; the token it carried was revoked at LINE, so none is left \
                         issued"
                    ),
                },
                retry_after: None,
                request_id,
                source,
            },
            other => other,
        }
    }

    /// How long LINE asked us to wait before retrying, if it said, capped
    /// at [`MAX_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } | Self::RateLimited { retry_after, .. } => {
                retry_after.map(|d| d.min(MAX_RETRY_AFTER))
            }
            _ => None,
        }
    }

    /// LINE's `X-Line-Request-Id` for the failed request, when it answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Transient { request_id, .. }
            | Self::RateLimited { request_id, .. }
            | Self::TooManyTokens { request_id, .. }
            | Self::MaybeIssued { request_id, .. }
            | Self::Permanent { request_id, .. } => request_id.as_deref(),
            Self::Assertion { .. } => None,
        }
    }

    /// The HTTP status LINE answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Transient { cause, .. } => cause.status(),
            Self::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            Self::TooManyTokens { .. } => Some(StatusCode::BAD_REQUEST),
            Self::MaybeIssued { status, .. } | Self::Permanent { status, .. } => Some(*status),
            Self::Assertion { .. } => None,
        }
    }

    /// The body LINE's error answer carried, when there was one.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            Self::Transient {
                cause: TransientCause::ServerError { body, .. },
                ..
            }
            | Self::RateLimited { body, .. }
            | Self::TooManyTokens { body, .. }
            | Self::Permanent { body, .. } => Some(body),
            _ => None,
        }
    }

    /// LINE's `error` code (`invalid_client`, `invalid_request`, ...), when
    /// the body had the OAuth shape.
    pub fn code(&self) -> Option<&str> {
        self.body().and_then(ErrorBody::code)
    }

    /// True when LINE refused a LINE Login refresh token (400 with the
    /// OAuth code `invalid_grant`): it expired (90 days after its login),
    /// was rotated out, revoked or never existed. Retrying cannot help; the
    /// user must log in again. Recognised from the status and LINE's error
    /// code, never from the description's wording.
    pub fn is_invalid_grant(&self) -> bool {
        self.is_refusal_with_code("invalid_grant")
    }

    /// True when LINE rejected the client itself (4xx with the OAuth code
    /// `invalid_client`): a wrong channel ID or secret on a LINE Login
    /// call, a rejected assertion on a channel-token call. Every call with
    /// the same credentials will fail the same way.
    pub fn is_invalid_client(&self) -> bool {
        self.is_refusal_with_code("invalid_client")
    }

    /// True for LINE's 429 ([`LineError::RateLimited`]); the wait it asked
    /// for is [`Self::retry_after`].
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::RateLimited { .. })
    }

    /// A permanent 4xx whose OAuth body carries `code`.
    fn is_refusal_with_code(&self, code: &str) -> bool {
        matches!(self, Self::Permanent { status, body, .. }
            if status.is_client_error() && body.code() == Some(code))
    }
}

impl LineError<Endpoint> {
    /// True when LINE does not know the assertion's signing key on this
    /// channel (404 from an endpoint that takes an assertion): the `kid` or
    /// the key file in the config is wrong, or the key was deleted in the
    /// console.
    pub fn is_unknown_signing_key(&self) -> bool {
        matches!(
            self,
            Self::Permanent { endpoint: Endpoint::IssueV21 | Endpoint::ValidKeyIdsV21 | Endpoint::IssueStateless, status, .. }
                if *status == StatusCode::NOT_FOUND
        )
    }
}

/// Why a [`LineError::Transient`] happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransientCause {
    /// No connection could be made (refused, DNS, TLS handshake).
    Connect,
    /// LINE did not answer within the client's timeout.
    Timeout,
    /// The connection broke while sending or receiving (reset, closed).
    Network,
    /// LINE answered 5xx (or 408 Request Timeout).
    ServerError {
        /// The status.
        status: StatusCode,
        /// What the body said.
        body: ErrorBody,
    },
    /// LINE answered 2xx to a call that issues nothing (verify, the key-ID
    /// list), but the body is not what the contract promises. (An issue
    /// call's unusable success is [`LineError::MaybeIssued`] instead.)
    UnreadableAnswer {
        /// The status.
        status: StatusCode,
        /// What is wrong with the body (no values from it).
        reason: String,
    },
}

impl TransientCause {
    /// The status of the answer, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::ServerError { status, .. } | Self::UnreadableAnswer { status, .. } => {
                Some(*status)
            }
            Self::Connect | Self::Timeout | Self::Network => None,
        }
    }
}

impl fmt::Display for TransientCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect => f.write_str("could not connect to LINE"),
            Self::Timeout => f.write_str("LINE did not answer within the request timeout"),
            Self::Network => f.write_str("the connection to LINE broke"),
            Self::ServerError { status, body } => {
                write!(f, "LINE answered {status} with {body}")
            }
            Self::UnreadableAnswer { status, reason } => write!(
                f,
                "LINE answered {status} but the body does not match the contract: {reason}"
            ),
        }
    }
}

/// The body of an error answer, in whichever of LINE's shapes it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorBody {
    /// `{"error": ..., "error_description": ...}` (the contract's
    /// `ErrorResponse`), the OAuth style.
    OAuth(ErrorResponse),
    /// `{"message": ...}`, the Messaging API style (30-token refusal,
    /// unknown signing key).
    Message(MessageErrorResponse),
    /// No body at all.
    Empty,
    /// JSON in neither shape.
    OtherJson,
    /// Not JSON: typically an HTML page from a proxy or load balancer.
    NotJson {
        /// The `Content-Type` it came with, if any.
        content_type: Option<String>,
    },
    /// The connection broke before the whole body arrived; the status is
    /// all there is.
    Cut,
    /// A body too large to be LINE's, not read (the status is all there is).
    TooLarge,
}

impl ErrorBody {
    /// Reads an error body. `secrets` are the values the request carried
    /// (token, channel secret, assertion): any occurrence of them in LINE's
    /// texts is replaced, so an echoing server cannot leak them into logs.
    pub fn parse(content_type: Option<&str>, body: &[u8], secrets: &[&str]) -> Self {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Self::Empty;
        }
        let map = match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Self::OtherJson,
            Err(_) => {
                return Self::NotJson {
                    content_type: content_type.map(|c| clean_text(c, &[])),
                };
            }
        };
        let text = |key: &str| -> Result<Option<String>, ()> {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(clean_text(s, secrets))),
                Some(_) => Err(()),
            }
        };
        if map.contains_key("error") || map.contains_key("error_description") {
            return match (text("error"), text("error_description")) {
                (Ok(error), Ok(error_description)) => Self::OAuth(ErrorResponse {
                    error,
                    error_description,
                }),
                _ => Self::OtherJson,
            };
        }
        match text("message") {
            Ok(Some(message)) => Self::Message(MessageErrorResponse { message }),
            _ => Self::OtherJson,
        }
    }

    /// LINE's `error` code, in the OAuth shape.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::OAuth(e) => e.error.as_deref(),
            _ => None,
        }
    }

    /// LINE's `error_description` or `message`, for humans.
    pub fn description(&self) -> Option<&str> {
        match self {
            Self::OAuth(e) => e.error_description.as_deref(),
            Self::Message(m) => Some(&m.message),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OAuth(ErrorResponse {
                error,
                error_description,
            }) => match (error, error_description) {
                (Some(e), Some(d)) => write!(f, "error {} ({})", Quoted(e), Quoted(d)),
                (Some(e), None) => write!(f, "error {}", Quoted(e)),
                (None, Some(d)) => write!(f, "error description {}", Quoted(d)),
                (None, None) => f.write_str("an empty OAuth error body"),
            },
            Self::Message(m) => write!(f, "message {}", Quoted(&m.message)),
            Self::Empty => f.write_str("an empty body"),
            Self::OtherJson => f.write_str("a JSON body in neither of LINE's error shapes"),
            Self::NotJson {
                content_type: Some(c),
            } => write!(f, "a non-JSON body ({c})"),
            Self::NotJson { content_type: None } => f.write_str("a non-JSON body"),
            Self::Cut => f.write_str("a body cut off when the connection broke"),
            Self::TooLarge => f.write_str("a body too large to be LINE's (not read)"),
        }
    }
}

/// Classifies a non-2xx answer. `secrets` are scrubbed from LINE's texts.
///
/// The rules, by status: 429 is [`LineError::RateLimited`]; 5xx and 408 are
/// transient; on [`Endpoint::IssueV21`], a 400 whose body has the `message`
/// shape is [`LineError::TooManyTokens`]; everything else is permanent.
///
/// Why the 30-token refusal is recognised by body shape: LINE documents two
/// 400s on `/oauth2/v2.1/token`, a failed assertion as
/// `{"error":"invalid_client",...}` and the 30-token refusal as
/// `{"message":...}`. The shape separates them without matching LINE's
/// wording, which it does not keep stable. A caller that must be sure (before
/// revoking to make room, say) confirms with the kid list.
pub(crate) fn classify<E: Operation>(
    endpoint: E,
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<Duration>,
    request_id: Option<String>,
) -> LineError<E> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return LineError::RateLimited {
            endpoint,
            retry_after,
            body,
            request_id,
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return LineError::Transient {
            endpoint,
            cause: TransientCause::ServerError { status, body },
            retry_after,
            request_id,
            source: None,
        };
    }
    if endpoint.refuses_when_full()
        && status == StatusCode::BAD_REQUEST
        && matches!(body, ErrorBody::Message(_))
    {
        return LineError::TooManyTokens {
            endpoint,
            body,
            request_id,
        };
    }
    LineError::Permanent {
        endpoint,
        status,
        body,
        request_id,
    }
}

/// Classifies a transport failure, stripping the URL from the error first.
/// A connect error wins over a timeout: a connect timeout is both, and
/// nothing was sent, which is what [`LineError::may_have_issued`] needs.
pub(crate) fn transport<E: Operation>(
    endpoint: E,
    err: reqwest::Error,
    request_id: Option<String>,
) -> LineError<E> {
    let err = err.without_url();
    let cause = if err.is_connect() {
        TransientCause::Connect
    } else if err.is_timeout() {
        TransientCause::Timeout
    } else {
        TransientCause::Network
    };
    LineError::Transient {
        endpoint,
        cause,
        retry_after: None,
        request_id,
        source: Some(TransportError(err)),
    }
}

/// The whole request ran past its deadline (`line::deadline`): maybe
/// nothing was sent, maybe LINE acted and its answer never came.
pub(crate) fn timed_out<E: Operation>(endpoint: E) -> LineError<E> {
    LineError::Transient {
        endpoint,
        cause: TransientCause::Timeout,
        retry_after: None,
        request_id: None,
        source: None,
    }
}

/// A 2xx whose body does not match the contract. `reason` is serde's
/// message with every quoted value blanked out: serde quotes the offending
/// value (`invalid type: string "..."`), and that value could be a token.
/// On an issue call it is [`LineError::MaybeIssued`], with the key ID if
/// the body has a well-formed one.
pub(crate) fn unreadable<E: Operation>(
    endpoint: E,
    status: StatusCode,
    body: &[u8],
    reason: &serde_json::Error,
    request_id: Option<String>,
) -> LineError<E> {
    let reason = blank_quoted(&reason.to_string());
    if endpoint.issues_tokens() {
        let (key_id, carried) = readable_parts(body);
        return LineError::MaybeIssued {
            endpoint,
            status,
            reason,
            key_id,
            carried,
            request_id,
            source: None,
        };
    }
    LineError::Transient {
        endpoint,
        cause: TransientCause::UnreadableAnswer { status, reason },
        retry_after: None,
        request_id,
        source: None,
    }
}

/// A 2xx answer that could not be read whole: too big, or the connection
/// broke mid-body (`source`). [`LineError::MaybeIssued`] on an issue call,
/// transient otherwise.
pub(crate) fn unread_success<E: Operation>(
    endpoint: E,
    status: StatusCode,
    reason: String,
    request_id: Option<String>,
    source: Option<reqwest::Error>,
) -> LineError<E> {
    let source = source.map(|e| TransportError(e.without_url()));
    if endpoint.issues_tokens() {
        return LineError::MaybeIssued {
            endpoint,
            status,
            reason,
            key_id: None,
            carried: None,
            request_id,
            source,
        };
    }
    LineError::Transient {
        endpoint,
        cause: TransientCause::UnreadableAnswer { status, reason },
        retry_after: None,
        request_id,
        source,
    }
}

/// The `key_id` and `access_token` of an otherwise unusable issue answer,
/// each if the body is a JSON object whose field of that name passes
/// [`validate::key_id`] or [`validate::access_token`].
fn readable_parts(body: &[u8]) -> (Option<KeyId>, Option<AccessToken>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    (
        field("key_id").and_then(|k| validate::key_id(k).ok()),
        field("access_token").and_then(|t| validate::access_token(t).ok()),
    )
}

/// A transport failure from `reqwest`, stripped of its URL.
///
/// It shows as the innermost cause's words (`connection refused`,
/// `operation timed out`, `connection closed before message completed`)
/// and hides the chain above it: `reqwest` and `hyper` wrap that cause in
/// layers like `error sending request` and `client error (SendRequest)`,
/// which add type names and nothing an operator can act on.
#[derive(Debug)]
pub struct TransportError(reqwest::Error);

impl TransportError {
    /// The underlying `reqwest` error (its URL already removed).
    pub fn reqwest(&self) -> &reqwest::Error {
        &self.0
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut innermost: &dyn std::error::Error = &self.0;
        while let Some(next) = innermost.source() {
            innermost = next;
        }
        f.write_str(&clean_text(&innermost.to_string(), &[]))
    }
}

impl std::error::Error for TransportError {}

/// Replaces the contents of every `"..."` with `…`. serde prints values
/// with `{:?}`, so a quote inside a value is escaped (`\"`) and skipped.
fn blank_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    let mut escaped = false;
    for c in text.chars() {
        if inside && escaped {
            escaped = false;
        } else if inside && c == '\\' {
            escaped = true;
        } else if c == '"' {
            out.push_str(if inside { "…\"" } else { "\"" });
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    if inside {
        out.push_str("…\"");
    }
    out
}

/// Shortens a text from the network, removes control characters and
/// replaces every non-empty secret in it.
fn clean_text(text: &str, secrets: &[&str]) -> String {
    let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    if text.chars().count() > MAX_TEXT_LEN {
        text = text.chars().take(MAX_TEXT_LEN).collect();
        text.push('…');
    }
    text
}

/// Formats ` (request id X)` or nothing.
struct RequestIdNote<'a>(&'a Option<String>);

impl fmt::Display for RequestIdNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (X-Line-Request-Id {id})"),
            None => Ok(()),
        }
    }
}

/// Formats how long LINE asked us to wait, and the cap when LINE asked
/// for more.
struct RetryAfterNote<'a>(&'a Option<Duration>);

impl fmt::Display for RetryAfterNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) if *d > MAX_RETRY_AFTER => write!(
                f,
                "LINE asked to wait {}, linetokd waits at most {}",
                humantime::format_duration(*d),
                humantime::format_duration(MAX_RETRY_AFTER)
            ),
            Some(d) => write!(f, "retry after {}", humantime::format_duration(*d)),
            None => f.write_str("no Retry-After"),
        }
    }
}

/// Formats ` (key ID X)` or nothing.
struct KeyIdNote<'a>(&'a Option<KeyId>);

impl fmt::Display for KeyIdNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " (its key ID would be {k})"),
            None => Ok(()),
        }
    }
}

/// Writes a text from LINE in double quotes, as it is: [`clean_text`] has
/// already removed control characters, and `{:?}` would add Rust's escapes.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ErrorBody {
        ErrorBody::parse(Some("application/json"), json.as_bytes(), &[])
    }

    #[test]
    fn both_body_shapes_parse() {
        let oauth = body(r#"{"error":"invalid_client","error_description":"Invalid exp"}"#);
        assert_eq!(oauth.code(), Some("invalid_client"));
        assert_eq!(oauth.description(), Some("Invalid exp"));
        let only_error = body(r#"{"error":"invalid_request"}"#);
        assert_eq!(only_error.code(), Some("invalid_request"));
        assert_eq!(only_error.description(), None);
        let message =
            body(r#"{"message":"The maximum number of access tokens has already been issued"}"#);
        assert_eq!(message.code(), None);
        assert!(matches!(message, ErrorBody::Message(_)));
    }

    #[test]
    fn odd_bodies_are_named_not_dropped() {
        assert_eq!(ErrorBody::parse(None, b"", &[]), ErrorBody::Empty);
        assert_eq!(ErrorBody::parse(None, b" \n", &[]), ErrorBody::Empty);
        assert_eq!(body(r#"{"foo":1}"#), ErrorBody::OtherJson);
        assert_eq!(body(r#"{"error":5}"#), ErrorBody::OtherJson);
        assert_eq!(body(r#"[1,2]"#), ErrorBody::OtherJson);
        let html = ErrorBody::parse(Some("text/html"), b"<html>502</html>", &[]);
        assert_eq!(
            html,
            ErrorBody::NotJson {
                content_type: Some("text/html".into())
            }
        );
        assert_eq!(html.to_string(), "a non-JSON body (text/html)");
    }

    #[test]
    fn secrets_echoed_by_the_server_are_scrubbed() {
        let b = ErrorBody::parse(
            None,
            br#"{"error":"invalid_request","error_description":"bad token TOPSECRET\n here"}"#,
            &["TOPSECRET", ""],
        );
        assert_eq!(b.description(), Some("bad token [redacted] here"));
    }

    #[test]
    fn long_texts_are_cut() {
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(5000));
        let d = body(&long).description().unwrap().chars().count();
        assert_eq!(d, MAX_TEXT_LEN + 1);
    }

    #[test]
    fn classification_by_status_and_shape() {
        let oauth = || body(r#"{"error":"invalid_client"}"#);
        let message = || body(r#"{"message":"x"}"#);
        let cases: Vec<(Endpoint, u16, ErrorBody, &str)> = vec![
            (Endpoint::IssueV21, 400, message(), "too_many"),
            (Endpoint::IssueV21, 400, oauth(), "permanent"),
            (Endpoint::IssueV21, 400, ErrorBody::Empty, "permanent"),
            (Endpoint::IssueV21, 404, message(), "permanent"),
            (Endpoint::ValidKeyIdsV21, 400, message(), "permanent"),
            (Endpoint::IssueStateless, 400, message(), "permanent"),
            (Endpoint::RevokeV21, 401, oauth(), "permanent"),
            (Endpoint::IssueV21, 302, ErrorBody::Empty, "permanent"),
            (Endpoint::IssueV21, 429, message(), "rate_limited"),
            (Endpoint::VerifyV21, 500, ErrorBody::Empty, "transient"),
            (Endpoint::VerifyV21, 503, oauth(), "transient"),
            (Endpoint::VerifyV21, 408, ErrorBody::Empty, "transient"),
        ];
        for (endpoint, status, body, want) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            let e = classify(endpoint, status, body, None, Some("rid".into()));
            let got = match &e {
                LineError::TooManyTokens { .. } => "too_many",
                LineError::Permanent { .. } => "permanent",
                LineError::RateLimited { .. } => "rate_limited",
                LineError::Transient { .. } => "transient",
                LineError::Assertion { .. } => "assertion",
                LineError::MaybeIssued { .. } => "maybe_issued",
            };
            assert_eq!(got, want, "{endpoint} {status}");
            assert_eq!(e.status(), Some(status));
            assert_eq!(e.request_id(), Some("rid"));
            assert_eq!(
                e.is_transient(),
                want == "transient" || want == "rate_limited"
            );
            assert_eq!(e.is_channel_full(), want == "too_many");
            // An error status is LINE saying no: nothing was issued.
            assert!(!e.may_have_issued(), "{endpoint} {status}");
        }
    }

    #[test]
    fn retry_after_is_capped_at_an_hour() {
        let huge = Duration::from_secs(99_999_999);
        for e in [
            classify(
                Endpoint::IssueV21,
                StatusCode::TOO_MANY_REQUESTS,
                ErrorBody::Empty,
                Some(huge),
                None,
            ),
            classify(
                Endpoint::IssueV21,
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::Empty,
                Some(huge),
                None,
            ),
        ] {
            assert_eq!(e.retry_after(), Some(MAX_RETRY_AFTER), "{e}");
        }
        let e = classify(
            Endpoint::VerifyV21,
            StatusCode::TOO_MANY_REQUESTS,
            ErrorBody::Empty,
            Some(huge),
            None,
        );
        assert_eq!(
            e.to_string(),
            "GET /oauth2/v2.1/verify: LINE is rate limiting this channel (429 Too Many Requests, \
             LINE asked to wait 3years 2months 18h 39m 27s, linetokd waits at most 1h)"
        );
        // Exactly the cap, and below it, are LINE's value.
        for secs in [3600, 1] {
            let e = classify(
                Endpoint::VerifyV21,
                StatusCode::TOO_MANY_REQUESTS,
                ErrorBody::Empty,
                Some(Duration::from_secs(secs)),
                None,
            );
            assert_eq!(e.retry_after(), Some(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn an_unusable_success_may_have_issued_only_on_issue_calls() {
        let serde_err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let ok = StatusCode::OK;
        let body = br#"{"key_id":"sDTOzw5wIfxxxxPEzcmeQA","expires_in":1.5}"#;
        for endpoint in Endpoint::ALL {
            let e = unreadable(endpoint, ok, body, &serde_err, None);
            assert_eq!(e.may_have_issued(), endpoint.issues_tokens(), "{endpoint}");
            assert_eq!(
                matches!(e, LineError::MaybeIssued { .. }),
                endpoint.issues_tokens()
            );
            assert!(!e.is_transient() || !endpoint.issues_tokens());
            assert!(!e.is_channel_full());
            assert_eq!(e.status(), Some(ok));
        }
        let e = unreadable(Endpoint::IssueV21, ok, body, &serde_err, None);
        assert_eq!(
            e.issued_key_id().map(KeyId::as_str),
            Some("sDTOzw5wIfxxxxPEzcmeQA")
        );
        // A key ID not shaped like LINE's is not offered as a lead.
        let bad = br#"{"key_id":"a b"}"#;
        let e = unreadable(Endpoint::IssueV21, ok, bad, &serde_err, None);
        assert_eq!(e.issued_key_id(), None);
    }

    #[test]
    fn an_unusable_success_keeps_the_token_it_carried_for_revoking_never_shows_it() {
        let serde_err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let ok = StatusCode::OK;
        let value = "eyJhbGciOiJIUzI1NiJ9.carried-token-value";
        let body = format!(r#"{{"access_token":"{value}","expires_in":2592000}}"#);
        let mut e = unreadable(Endpoint::IssueV21, ok, body.as_bytes(), &serde_err, None);
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains(value), "{shown}");
        }
        let carried = e.take_carried_token().expect("the token is kept");
        assert_eq!(carried.expose(), value);
        assert!(e.take_carried_token().is_none(), "taken once");
        // Revoked: a transient failure that left nothing issued.
        let e = e.revoked_what_it_carried();
        assert!(e.is_transient() && !e.may_have_issued(), "{e}");
        assert!(e.to_string().contains("revoked at LINE"), "{e}");
        // Nothing is kept from a value not shaped like a token, nor from an
        // answer that is not an issue's.
        let odd = br#"{"access_token":"a
b"}"#;
        let mut e = unreadable(Endpoint::IssueV21, ok, odd, &serde_err, None);
        assert!(e.take_carried_token().is_none());
        let mut e = unreadable(Endpoint::VerifyV21, ok, body.as_bytes(), &serde_err, None);
        assert!(e.take_carried_token().is_none());
        assert!(!e.to_string().contains(value));
    }

    #[test]
    fn displays_are_words_without_debug_names() {
        let serde_err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let errors = [
            classify(
                Endpoint::IssueV21,
                StatusCode::BAD_REQUEST,
                body(
                    r#"{"message":"The maximum number of access tokens has already been issued"}"#,
                ),
                None,
                Some("rid".into()),
            ),
            classify(
                Endpoint::VerifyV21,
                StatusCode::BAD_GATEWAY,
                ErrorBody::Cut,
                Some(Duration::from_secs(5)),
                None,
            ),
            classify(
                Endpoint::RevokeV21,
                StatusCode::FORBIDDEN,
                ErrorBody::TooLarge,
                None,
                None,
            ),
            unreadable(
                Endpoint::IssueV21,
                StatusCode::OK,
                br#"{"key_id":"kid-1"}"#,
                &serde_err,
                Some("rid".into()),
            ),
            unread_success(
                Endpoint::ValidKeyIdsV21,
                StatusCode::OK,
                "the body is larger than 65536 bytes".into(),
                None,
                None,
            ),
        ];
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "POST /oauth2/v2.1/token: LINE refused to issue a token: the channel already has \
                 the maximum of 30 valid v2.1 tokens (400 Bad Request with message \"The maximum \
                 number of access tokens has already been issued\") (X-Line-Request-Id rid)",
                "GET /oauth2/v2.1/verify: LINE answered 502 Bad Gateway with a body cut off when \
                 the connection broke",
                "POST /oauth2/v2.1/revoke: LINE refused the request: 403 Forbidden with a body too \
                 large to be LINE's (not read)",
                "POST /oauth2/v2.1/token: LINE answered 200 OK but the answer is unusable (EOF \
                 while parsing an object at line 1 column 1), so LINE may have issued a token \
                 that linetokd does not hold (its key ID would be kid-1) (X-Line-Request-Id rid)",
                "GET /oauth2/v2.1/tokens/kid: LINE answered 200 OK but the body does not match \
                 the contract: the body is larger than 65536 bytes",
            ]
        );
        for text in &shown {
            for debug in ["Some(", "None", "{", "::", "StatusCode", "Endpoint", "\\u{"] {
                assert!(!text.contains(debug), "{debug} in {text}");
            }
        }
    }

    #[test]
    fn texts_from_line_are_quoted_without_rust_escapes() {
        let b = body(r#"{"error":"invalid_client","error_description":"Ungültiges \"exp\""}"#);
        assert_eq!(
            b.to_string(),
            "error \"invalid_client\" (\"Ungültiges \"exp\"\")"
        );
    }

    #[test]
    fn unknown_signing_key_is_a_404_on_an_assertion_endpoint() {
        let e = classify(
            Endpoint::IssueV21,
            StatusCode::NOT_FOUND,
            ErrorBody::Empty,
            None,
            None,
        );
        assert!(e.is_unknown_signing_key());
        let e = classify(
            Endpoint::RevokeV21,
            StatusCode::NOT_FOUND,
            ErrorBody::Empty,
            None,
            None,
        );
        assert!(!e.is_unknown_signing_key());
    }

    #[test]
    fn display_names_endpoint_status_body_and_request_id() {
        let e = classify(
            Endpoint::IssueV21,
            StatusCode::BAD_REQUEST,
            body(r#"{"error":"invalid_client","error_description":"Invalid exp"}"#),
            None,
            Some("abc123".into()),
        );
        assert_eq!(
            e.to_string(),
            "POST /oauth2/v2.1/token: LINE refused the request: 400 Bad Request with \
             error \"invalid_client\" (\"Invalid exp\") (X-Line-Request-Id abc123)"
        );
        let e = classify(
            Endpoint::VerifyV21,
            StatusCode::TOO_MANY_REQUESTS,
            ErrorBody::Empty,
            Some(Duration::from_secs(30)),
            None,
        );
        assert_eq!(
            e.to_string(),
            "GET /oauth2/v2.1/verify: LINE is rate limiting this channel \
             (429 Too Many Requests, retry after 30s)"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn quoted_values_are_blanked() {
        assert_eq!(
            blank_quoted(r#"invalid type: string "SECRET", expected i64 at line 1"#),
            r#"invalid type: string "…", expected i64 at line 1"#
        );
        assert_eq!(
            blank_quoted("missing field `key_id`"),
            "missing field `key_id`"
        );
        assert_eq!(blank_quoted(r#"open "SECRET"#), r#"open "…""#);
        assert_eq!(blank_quoted(r#"s "A\"B" t"#), r#"s "…" t"#);
    }
}
