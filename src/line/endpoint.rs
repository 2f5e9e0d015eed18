//! The operations of LINE's channel access token API, by name.
//!
//! Each [`Endpoint`] is one operation of `line-openapi/channel-access-token.yml`:
//! its path, its HTTP method and its `operationId` come from that file and a
//! contract test (`tests/it/contract.rs`) checks them against it. Errors,
//! logs and metrics name the endpoint with [`Endpoint::as_str`], a stable
//! snake_case label.
//!
//! Depends on nothing but `reqwest::Method`.

use std::fmt;

use reqwest::Method;

/// One operation of LINE's channel access token API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /oauth2/v2.1/token`, operationId `issueChannelTokenByJWT`:
    /// issue a v2.1 token with a JWT assertion.
    IssueV21,
    /// `GET /oauth2/v2.1/verify`, operationId `verifyChannelTokenByJWT`:
    /// is this v2.1 token still accepted?
    VerifyV21,
    /// `GET /oauth2/v2.1/tokens/kid`, operationId
    /// `getsAllValidChannelAccessTokenKeyIds`: the key IDs of the channel's
    /// valid v2.1 tokens.
    ValidKeyIdsV21,
    /// `POST /oauth2/v2.1/revoke`, operationId `revokeChannelTokenByJWT`:
    /// revoke a v2.1 token (needs the channel secret, not the assertion).
    RevokeV21,
    /// `POST /v2/oauth/accessToken`, operationId `issueChannelToken`: issue a
    /// short-lived (30 day) token with the channel secret.
    IssueShortLived,
    /// `POST /v2/oauth/verify`, operationId `verifyChannelToken`: verify a
    /// short-lived or long-lived token.
    VerifyShortLived,
    /// `POST /v2/oauth/revoke`, operationId `revokeChannelToken`: revoke a
    /// short-lived or long-lived token.
    RevokeShortLived,
    /// `POST /oauth2/v3/token`, operationId `issueStatelessChannelToken`:
    /// issue a 15-minute stateless token, with an assertion or the secret.
    IssueStateless,
}

impl Endpoint {
    /// Every endpoint, in the order of the table above.
    pub const ALL: [Endpoint; 8] = [
        Endpoint::IssueV21,
        Endpoint::VerifyV21,
        Endpoint::ValidKeyIdsV21,
        Endpoint::RevokeV21,
        Endpoint::IssueShortLived,
        Endpoint::VerifyShortLived,
        Endpoint::RevokeShortLived,
        Endpoint::IssueStateless,
    ];

    /// The path below the base URL, exactly as in the OpenAPI file.
    pub fn path(self) -> &'static str {
        match self {
            Self::IssueV21 => "/oauth2/v2.1/token",
            Self::VerifyV21 => "/oauth2/v2.1/verify",
            Self::ValidKeyIdsV21 => "/oauth2/v2.1/tokens/kid",
            Self::RevokeV21 => "/oauth2/v2.1/revoke",
            Self::IssueShortLived => "/v2/oauth/accessToken",
            Self::VerifyShortLived => "/v2/oauth/verify",
            Self::RevokeShortLived => "/v2/oauth/revoke",
            Self::IssueStateless => "/oauth2/v3/token",
        }
    }

    /// The HTTP method. Note the asymmetry LINE's contract has: v2.1 verify
    /// is a `GET` with a query string, short-lived verify a `POST` with a form.
    pub fn method(self) -> Method {
        match self {
            Self::VerifyV21 | Self::ValidKeyIdsV21 => Method::GET,
            Self::IssueV21
            | Self::RevokeV21
            | Self::IssueShortLived
            | Self::VerifyShortLived
            | Self::RevokeShortLived
            | Self::IssueStateless => Method::POST,
        }
    }

    /// True for the endpoints that create a token (v2.1, short-lived and
    /// stateless issue): the ones where a lost or unreadable answer may
    /// leave a token on LINE's side that no one holds.
    pub fn issues_tokens(self) -> bool {
        matches!(
            self,
            Self::IssueV21 | Self::IssueShortLived | Self::IssueStateless
        )
    }

    /// The OpenAPI `operationId`.
    pub fn operation_id(self) -> &'static str {
        match self {
            Self::IssueV21 => "issueChannelTokenByJWT",
            Self::VerifyV21 => "verifyChannelTokenByJWT",
            Self::ValidKeyIdsV21 => "getsAllValidChannelAccessTokenKeyIds",
            Self::RevokeV21 => "revokeChannelTokenByJWT",
            Self::IssueShortLived => "issueChannelToken",
            Self::VerifyShortLived => "verifyChannelToken",
            Self::RevokeShortLived => "revokeChannelToken",
            Self::IssueStateless => "issueStatelessChannelToken",
        }
    }

    /// A stable snake_case label for logs and metrics (`endpoint="v21_issue"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IssueV21 => "v21_issue",
            Self::VerifyV21 => "v21_verify",
            Self::ValidKeyIdsV21 => "v21_key_ids",
            Self::RevokeV21 => "v21_revoke",
            Self::IssueShortLived => "short_lived_issue",
            Self::VerifyShortLived => "short_lived_verify",
            Self::RevokeShortLived => "short_lived_revoke",
            Self::IssueStateless => "stateless_issue",
        }
    }
}

/// Shows `METHOD /path`, which is what an operator greps LINE's docs for.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method(), self.path())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_paths_and_labels_are_distinct() {
        let labels: HashSet<_> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
        let ops: HashSet<_> = Endpoint::ALL.iter().map(|e| e.operation_id()).collect();
        let routes: HashSet<_> = Endpoint::ALL
            .iter()
            .map(|e| (e.method(), e.path()))
            .collect();
        assert_eq!(labels.len(), Endpoint::ALL.len());
        assert_eq!(ops.len(), Endpoint::ALL.len());
        assert_eq!(routes.len(), Endpoint::ALL.len());
    }

    #[test]
    fn only_the_three_issue_endpoints_issue_tokens() {
        let issuing: Vec<Endpoint> = Endpoint::ALL
            .into_iter()
            .filter(|e| e.issues_tokens())
            .collect();
        assert_eq!(
            issuing,
            [
                Endpoint::IssueV21,
                Endpoint::IssueShortLived,
                Endpoint::IssueStateless
            ]
        );
    }

    #[test]
    fn display_is_method_and_path() {
        assert_eq!(Endpoint::VerifyV21.to_string(), "GET /oauth2/v2.1/verify");
        assert_eq!(
            Endpoint::RevokeShortLived.to_string(),
            "POST /v2/oauth/revoke"
        );
    }
}
