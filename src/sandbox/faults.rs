//! Fault injection for the sandbox's LINE endpoints: the failures the daemon
//! must survive (DESIGN.md §5), on demand and reproducibly.
//!
//! A [`Faults`] value holds a rule per endpoint path, a `"*"` default, a
//! seed, and a `down` switch (every LINE endpoint answers 503, for the
//! simulation's two-day outage). The same JSON shape is served at
//! `/_sandbox/faults` and read from the `[faults]` table of the sandbox
//! config. [`FaultEngine::decide`] draws one [`Decision`] per request from a
//! seeded RNG; the HTTP layer (`routes`) carries it out.
//!
//! Invariants: a rule's rates are within 0..=1 (checked by
//! [`Faults::validate`]); every request draws the same number of random
//! numbers, so a seed replays the same faults for the same request sequence.
//!
//! Depends on nothing in the crate but the error type.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use super::errors::SandboxError;

/// The key of the default rule, applied to endpoints without their own.
pub const ANY_ENDPOINT: &str = "*";

/// LINE's endpoints, as the paths that name them in fault rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /oauth2/v2.1/token`
    IssueV21,
    /// `GET /oauth2/v2.1/verify`
    VerifyV21,
    /// `GET /oauth2/v2.1/tokens/kid`
    ListKids,
    /// `POST /oauth2/v2.1/revoke`
    RevokeV21,
    /// `POST /v2/oauth/accessToken`
    IssueShortLived,
    /// `POST /v2/oauth/verify`
    VerifyShortLived,
    /// `POST /v2/oauth/revoke`
    RevokeShortLived,
    /// `POST /oauth2/v3/token`
    IssueStateless,
}

impl Endpoint {
    /// Every LINE endpoint the sandbox serves.
    pub const ALL: [Endpoint; 8] = [
        Self::IssueV21,
        Self::VerifyV21,
        Self::ListKids,
        Self::RevokeV21,
        Self::IssueShortLived,
        Self::VerifyShortLived,
        Self::RevokeShortLived,
        Self::IssueStateless,
    ];

    /// The endpoint's path, exactly as in LINE's OpenAPI contract.
    pub fn path(self) -> &'static str {
        match self {
            Self::IssueV21 => "/oauth2/v2.1/token",
            Self::VerifyV21 => "/oauth2/v2.1/verify",
            Self::ListKids => "/oauth2/v2.1/tokens/kid",
            Self::RevokeV21 => "/oauth2/v2.1/revoke",
            Self::IssueShortLived => "/v2/oauth/accessToken",
            Self::VerifyShortLived => "/v2/oauth/verify",
            Self::RevokeShortLived => "/v2/oauth/revoke",
            Self::IssueStateless => "/oauth2/v3/token",
        }
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// What can go wrong on one endpoint. Every field defaults to "nothing".
/// Rates are probabilities per request, checked in the order hang, drop,
/// rate limit, error, drop-after.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRule {
    /// Share of requests answered 500 `{"message"}`.
    pub error_rate: f64,
    /// Share of requests answered 429 with `Retry-After`.
    pub rate_limit_rate: f64,
    /// The `Retry-After` seconds sent with a 429.
    pub retry_after_secs: u64,
    /// Delay added before every answer of this endpoint (tokio time).
    pub latency_ms: u64,
    /// Share of requests never answered: the sandbox holds them until the
    /// client gives up (or the sandbox shuts down, then drops them).
    pub hang_rate: f64,
    /// Share of requests whose connection is closed with no response,
    /// before the sandbox acts on them.
    pub drop_rate: f64,
    /// Share of requests the sandbox carries out (a token is issued or
    /// revoked) and then closes the connection without answering: the lost
    /// answer that the daemon's crash journal and reconcile must handle.
    pub drop_after_rate: f64,
}

impl FaultRule {
    fn validate(&self, endpoint: &str) -> Result<(), SandboxError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("hang_rate", self.hang_rate),
            ("drop_rate", self.drop_rate),
            ("drop_after_rate", self.drop_after_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SandboxError::Faults {
                    key: format!("endpoints.{endpoint:?}.{name}"),
                    problem: format!("{rate} is not a probability between 0 and 1"),
                });
            }
        }
        Ok(())
    }
}

/// The sandbox's fault configuration (the `/_sandbox/faults` document).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Seed of the fault RNG; `None` seeds from the OS. Setting faults
    /// restarts the sequence, so the same seed replays the same faults.
    pub seed: Option<u64>,
    /// When true every LINE endpoint answers 503 (the inspection API keeps
    /// working): a LINE outage.
    pub down: bool,
    /// Rules by endpoint path (e.g. `/oauth2/v2.1/token`) or `"*"` for every
    /// endpoint without its own rule. An endpoint's own rule replaces the
    /// default whole; it is not merged field by field.
    pub endpoints: BTreeMap<String, FaultRule>,
}

impl Faults {
    /// Checks every rule: known endpoint paths, rates within 0..=1.
    ///
    /// # Errors
    /// [`SandboxError::Faults`] naming the offending key.
    pub fn validate(&self) -> Result<(), SandboxError> {
        for (endpoint, rule) in &self.endpoints {
            if endpoint != ANY_ENDPOINT && Endpoint::from_path(endpoint).is_none() {
                let known: Vec<&str> = Endpoint::ALL.iter().map(|e| e.path()).collect();
                return Err(SandboxError::Faults {
                    key: format!("endpoints.{endpoint:?}"),
                    problem: format!(
                        "not a LINE endpoint the sandbox serves; use \"*\" or one of {}",
                        known.join(", ")
                    ),
                });
            }
            rule.validate(endpoint)?;
        }
        Ok(())
    }

    /// The rule in force for `endpoint`.
    pub fn rule_for(&self, endpoint: Endpoint) -> Option<&FaultRule> {
        self.endpoints
            .get(endpoint.path())
            .or_else(|| self.endpoints.get(ANY_ENDPOINT))
    }
}

/// What the sandbox does with one request, before or instead of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve it normally.
    Pass,
    /// 503: the sandbox is down.
    Down,
    /// Never answer.
    Hang,
    /// Close the connection without acting or answering.
    Drop,
    /// 429 with this `Retry-After` in seconds.
    RateLimit(u64),
    /// 500.
    Error,
    /// Act, then close the connection without answering.
    DropAfter,
}

/// The fault decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Added delay before acting.
    pub latency: Duration,
    /// What to do.
    pub action: Action,
}

/// The current [`Faults`] plus the RNG that draws from them.
#[derive(Debug)]
pub struct FaultEngine {
    faults: Faults,
    rng: StdRng,
}

impl Default for FaultEngine {
    fn default() -> Self {
        Self::new(Faults::default())
    }
}

impl FaultEngine {
    /// An engine applying `faults` (assumed validated).
    pub fn new(faults: Faults) -> Self {
        let rng = match faults.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { faults, rng }
    }

    /// The faults in force.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Sets or clears the outage switch, keeping rules and RNG position.
    pub fn set_down(&mut self, down: bool) {
        self.faults.down = down;
    }

    /// Draws the decision for one request to `endpoint`.
    pub fn decide(&mut self, endpoint: Endpoint) -> Decision {
        let rule = self.faults.rule_for(endpoint).cloned().unwrap_or_default();
        // Always draw all five so a seed replays identically whatever the
        // outcome of each draw.
        let draws: [f64; 5] = std::array::from_fn(|_| self.rng.random::<f64>());
        let latency = Duration::from_millis(rule.latency_ms);
        let action = if self.faults.down {
            Action::Down
        } else if draws[0] < rule.hang_rate {
            Action::Hang
        } else if draws[1] < rule.drop_rate {
            Action::Drop
        } else if draws[2] < rule.rate_limit_rate {
            Action::RateLimit(rule.retry_after_secs)
        } else if draws[3] < rule.error_rate {
            Action::Error
        } else if draws[4] < rule.drop_after_rate {
            Action::DropAfter
        } else {
            Action::Pass
        };
        Decision { latency, action }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(rule: FaultRule) -> Faults {
        Faults {
            seed: Some(7),
            down: false,
            endpoints: BTreeMap::from([(ANY_ENDPOINT.to_owned(), rule)]),
        }
    }

    #[test]
    fn no_rules_means_every_request_passes() {
        let mut engine = FaultEngine::default();
        for e in Endpoint::ALL {
            assert_eq!(engine.decide(e).action, Action::Pass);
        }
    }

    #[test]
    fn certain_faults_always_fire_and_the_endpoint_rule_replaces_the_default() {
        let mut f = faults(FaultRule {
            error_rate: 1.0,
            latency_ms: 5,
            ..FaultRule::default()
        });
        f.endpoints.insert(
            Endpoint::RevokeV21.path().to_owned(),
            FaultRule {
                rate_limit_rate: 1.0,
                retry_after_secs: 42,
                ..FaultRule::default()
            },
        );
        let mut engine = FaultEngine::new(f);
        let d = engine.decide(Endpoint::IssueV21);
        assert_eq!(d.action, Action::Error);
        assert_eq!(d.latency, Duration::from_millis(5));
        let d = engine.decide(Endpoint::RevokeV21);
        assert_eq!(d.action, Action::RateLimit(42));
        assert_eq!(d.latency, Duration::ZERO);
    }

    #[test]
    fn down_overrides_every_rule() {
        let mut f = faults(FaultRule::default());
        f.down = true;
        let mut engine = FaultEngine::new(f);
        assert_eq!(engine.decide(Endpoint::ListKids).action, Action::Down);
    }

    #[test]
    fn a_seed_replays_the_same_faults_and_rates_are_roughly_honoured() {
        let rule = FaultRule {
            error_rate: 0.3,
            drop_rate: 0.1,
            ..FaultRule::default()
        };
        let run = || {
            let mut engine = FaultEngine::new(faults(rule.clone()));
            (0..1000)
                .map(|_| engine.decide(Endpoint::IssueV21).action)
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let errors = a.iter().filter(|x| **x == Action::Error).count();
        let drops = a.iter().filter(|x| **x == Action::Drop).count();
        // error fires on 30% of the 90% not dropped: ~270; drop ~100
        assert!((180..360).contains(&errors), "{errors}");
        assert!((50..150).contains(&drops), "{drops}");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let bad_rate = faults(FaultRule {
            hang_rate: 1.5,
            ..FaultRule::default()
        });
        let err = bad_rate.validate().unwrap_err().to_string();
        assert!(err.contains("hang_rate"), "{err}");
        let mut bad_path = Faults::default();
        bad_path
            .endpoints
            .insert("/oauth2/v2.1/tokens".to_owned(), FaultRule::default());
        let err = bad_path.validate().unwrap_err().to_string();
        assert!(err.contains("/oauth2/v2.1/tokens"), "{err}");
        let nan = faults(FaultRule {
            error_rate: f64::NAN,
            ..FaultRule::default()
        });
        assert!(nan.validate().is_err());
    }

    #[test]
    fn every_endpoint_path_round_trips() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
        assert_eq!(Endpoint::from_path("/_sandbox/faults"), None);
    }
}
