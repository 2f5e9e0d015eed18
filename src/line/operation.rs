//! What the client's plumbing needs to know about an operation, whichever
//! of LINE's APIs it belongs to.
//!
//! Two enums name LINE operations: [`Endpoint`] is exactly the eight
//! operations of the channel access token OpenAPI file (a contract test
//! checks that both ways), and [`LoginEndpoint`] the LINE Login token
//! operations, which share some of those URLs but are not in that file.
//! [`Operation`] is what the one request path (`LineClient`'s sending,
//! logging, observer and error classification) asks of either, so neither
//! enum has to pretend to be the other. [`LineError`](crate::line::LineError)
//! and [`RequestObserver`](crate::line::RequestObserver) are generic over
//! it, defaulting to [`Endpoint`] so channel-token code reads as before.
//!
//! Depends on `line::endpoint` and `line::login` (the two implementations).

use std::fmt;
use std::hash::Hash;

use reqwest::Method;

use crate::line::endpoint::Endpoint;
use crate::line::login::LoginEndpoint;

/// One operation of one of LINE's APIs, as the request plumbing sees it.
pub trait Operation: Copy + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// A stable snake_case label for logs and metrics, unique across both
    /// enums (`v21_issue`, `login_refresh`).
    fn label(self) -> &'static str;

    /// The path below the base URL.
    fn path(self) -> &'static str;

    /// The HTTP method.
    fn method(self) -> Method;

    /// True for the operations that create a token (or a new refresh
    /// token): a lost or unreadable success may leave something on LINE's
    /// side that no one holds.
    fn issues_tokens(self) -> bool;

    /// True where a 400 in the `{"message"}` shape is LINE's 30-token
    /// refusal ([`crate::line::LineError::TooManyTokens`]): the v2.1 issue
    /// endpoint only.
    fn refuses_when_full(self) -> bool {
        false
    }
}

impl Operation for Endpoint {
    fn label(self) -> &'static str {
        self.as_str()
    }

    fn path(self) -> &'static str {
        Endpoint::path(self)
    }

    fn method(self) -> Method {
        Endpoint::method(self)
    }

    fn issues_tokens(self) -> bool {
        Endpoint::issues_tokens(self)
    }

    fn refuses_when_full(self) -> bool {
        self == Endpoint::IssueV21
    }
}

impl Operation for LoginEndpoint {
    fn label(self) -> &'static str {
        self.as_str()
    }

    fn path(self) -> &'static str {
        LoginEndpoint::path(self)
    }

    fn method(self) -> Method {
        LoginEndpoint::method(self)
    }

    fn issues_tokens(self) -> bool {
        LoginEndpoint::issues_tokens(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn labels_are_unique_across_both_apis() {
        let mut labels: Vec<&str> = Endpoint::ALL.iter().map(|e| e.label()).collect();
        labels.extend(LoginEndpoint::ALL.iter().map(|e| e.label()));
        let unique: HashSet<&str> = labels.iter().copied().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }

    #[test]
    fn only_v21_issue_refuses_when_full() {
        for e in Endpoint::ALL {
            assert_eq!(e.refuses_when_full(), e == Endpoint::IssueV21, "{e}");
        }
        assert!(LoginEndpoint::ALL.iter().all(|e| !e.refuses_when_full()));
    }
}
