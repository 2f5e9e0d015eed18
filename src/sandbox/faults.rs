//! Fault injection for the sandbox's LINE endpoints: the failures the daemon
//! must survive (docs/design.md §5), on demand and reproducibly.
//!
//! A [`Faults`] value holds a rule per endpoint path, a `"*"` default, a
//! seed, and a `down` switch (every LINE endpoint answers 503, for the
//! simulation's two-day outage). The same JSON shape is served at
//! `/_sandbox/faults` and read from the `[faults]` table of the sandbox
//! config. [`FaultEngine::decide`] draws one [`Decision`] per request from a
//! seeded RNG; the HTTP layer (`routes`) carries it out.
//!
//! Two rules act on one endpoint only, because they model one endpoint's
//! failure: `refuse_live_rate` (verify answers 400 for a live token, while
//! the key-ID list still lists it) on `/oauth2/v2.1/verify`, and
//! `malformed_rate` (the token is issued, the 200's body is broken: "LINE
//! may have issued") on `/oauth2/v2.1/token`.
//!
//! Invariants: a rule's rates are within 0..=1 (checked by
//! [`Faults::validate`]); each endpoint draws from its own RNG stream
//! (derived from the seed and the endpoint) and every request draws the same
//! number of random numbers, so a seed replays the same faults for the same
//! sequence of requests to each endpoint, however calls to different
//! endpoints interleave.
//!
//! Depends on the error type and `state`'s [`VerifyRefusal`].

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use super::errors::SandboxError;
use super::state::VerifyRefusal;

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
    /// `POST /user/v1/deauthorize` (LINE Login). Not an operation of the
    /// channel token contract, so it is in [`Self::SERVED`], not
    /// [`Self::ALL`]. LINE Login's token, verify and revoke calls share the
    /// paths of [`Self::IssueV21`], [`Self::VerifyV21`] and
    /// [`Self::RevokeV21`], and with them their fault rules.
    Deauthorize,
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

    /// Every path the sandbox serves for LINE: [`Self::ALL`] (first, so
    /// each keeps its RNG stream) and LINE Login's own.
    pub const SERVED: [Endpoint; 9] = [
        Self::IssueV21,
        Self::VerifyV21,
        Self::ListKids,
        Self::RevokeV21,
        Self::IssueShortLived,
        Self::VerifyShortLived,
        Self::RevokeShortLived,
        Self::IssueStateless,
        Self::Deauthorize,
    ];

    /// The endpoint's path, exactly as in LINE's OpenAPI contract (LINE
    /// Login's reference for [`Self::Deauthorize`]).
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
            Self::Deauthorize => "/user/v1/deauthorize",
        }
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::SERVED.into_iter().find(|e| e.path() == path)
    }
}

/// The broken bodies a malformed 200 from the issue endpoint can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedBody {
    /// Valid JSON without `key_id`.
    MissingKeyId,
    /// The JSON answer cut in half (it may hold part of the token value).
    TruncatedJson,
    /// An HTML page (`text/html`), as a proxy's error page would be.
    Html,
}

impl MalformedBody {
    /// Every shape, in the order a draw picks among them.
    pub const ALL: [MalformedBody; 3] = [Self::MissingKeyId, Self::TruncatedJson, Self::Html];
}

/// What can go wrong on one endpoint. Every field defaults to "nothing".
/// Rates are probabilities per request, checked in the order hang, drop,
/// rate limit, error, drop-after; the verify refusal and the malformed body
/// apply to requests that pass all of those.
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
    /// `/oauth2/v2.1/verify` only: share of verify calls for a LIVE token
    /// answered 400 `invalid_request` as if it were dead, while the key-ID
    /// list still lists it and the cap still counts it.
    pub refuse_live_rate: f64,
    /// How those refusals read; absent: each one draws expired or invalid
    /// evenly.
    pub refuse_live_as: Option<VerifyRefusal>,
    /// `/oauth2/v2.1/token` only: share of issue requests that really issue
    /// the token (live, counted, listed) but answer 200 with a broken body.
    pub malformed_rate: f64,
    /// Which broken body; absent: each one draws among the three evenly.
    pub malformed_as: Option<MalformedBody>,
}

impl FaultRule {
    fn validate(&self, endpoint: &str) -> Result<(), SandboxError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("hang_rate", self.hang_rate),
            ("drop_rate", self.drop_rate),
            ("drop_after_rate", self.drop_after_rate),
            ("refuse_live_rate", self.refuse_live_rate),
            ("malformed_rate", self.malformed_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SandboxError::Faults {
                    key: format!("endpoints.{endpoint:?}.{name}"),
                    problem: format!("{rate} is not a probability between 0 and 1"),
                });
            }
        }
        // The one-endpoint rules, set on another endpoint, would silently
        // do nothing: say so instead.
        let only = [
            (
                Endpoint::VerifyV21,
                "refuse_live_rate",
                self.refuse_live_rate > 0.0 || self.refuse_live_as.is_some(),
            ),
            (
                Endpoint::IssueV21,
                "malformed_rate",
                self.malformed_rate > 0.0 || self.malformed_as.is_some(),
            ),
        ];
        for (target, name, set) in only {
            if set && endpoint != ANY_ENDPOINT && endpoint != target.path() {
                return Err(SandboxError::Faults {
                    key: format!("endpoints.{endpoint:?}.{name}"),
                    problem: format!("only {} acts on it; set it there", target.path()),
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
                let known: Vec<&str> = Endpoint::SERVED.iter().map(|e| e.path()).collect();
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
    /// Verify only, when passing: refuse a live token this way.
    pub refuse_live: Option<VerifyRefusal>,
    /// v2.1 issue only, when passing: issue, then answer this broken body.
    pub malformed: Option<MalformedBody>,
}

/// The current [`Faults`] plus one RNG stream per endpoint.
#[derive(Debug)]
pub struct FaultEngine {
    faults: Faults,
    /// Indexed like [`Endpoint::SERVED`].
    rngs: Vec<StdRng>,
}

/// The RNG stream of the endpoint at `index` in [`Endpoint::SERVED`]: distinct
/// per endpoint, fixed by the seed.
fn endpoint_rng(seed: Option<u64>, index: usize) -> StdRng {
    match seed {
        // Offsets by the golden-ratio constant keep the streams apart;
        // seed_from_u64 mixes the result further.
        Some(seed) => {
            StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
        None => StdRng::from_os_rng(),
    }
}

impl Default for FaultEngine {
    fn default() -> Self {
        Self::new(Faults::default())
    }
}

impl FaultEngine {
    /// An engine applying `faults` (assumed validated).
    pub fn new(faults: Faults) -> Self {
        let rngs = (0..Endpoint::SERVED.len())
            .map(|i| endpoint_rng(faults.seed, i))
            .collect();
        Self { faults, rngs }
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
        let index = Endpoint::SERVED
            .iter()
            .position(|e| *e == endpoint)
            .unwrap_or_default();
        let rng = &mut self.rngs[index];
        // Always draw all nine so a seed replays identically whatever the
        // outcome of each draw.
        let draws: [f64; 9] = std::array::from_fn(|_| rng.random::<f64>());
        let latency = Duration::from_millis(rule.latency_ms);
        let refuse_live = (endpoint == Endpoint::VerifyV21 && draws[5] < rule.refuse_live_rate)
            .then(|| {
                rule.refuse_live_as.unwrap_or(if draws[6] < 0.5 {
                    VerifyRefusal::Expired
                } else {
                    VerifyRefusal::Invalid
                })
            });
        let malformed =
            (endpoint == Endpoint::IssueV21 && draws[7] < rule.malformed_rate).then(|| {
                rule.malformed_as.unwrap_or_else(|| {
                    // draws[8] < 1, so the product is below 3.
                    let pick = (draws[8] * MalformedBody::ALL.len() as f64) as usize;
                    MalformedBody::ALL[pick.min(MalformedBody::ALL.len() - 1)]
                })
            });
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
        let passes = action == Action::Pass;
        Decision {
            latency,
            action,
            refuse_live: refuse_live.filter(|_| passes),
            malformed: malformed.filter(|_| passes),
        }
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
    fn each_endpoint_replays_its_own_sequence_however_calls_interleave() {
        let rule = FaultRule {
            error_rate: 0.5,
            ..FaultRule::default()
        };
        let alone: Vec<Action> = {
            let mut engine = FaultEngine::new(faults(rule.clone()));
            (0..200)
                .map(|_| engine.decide(Endpoint::IssueV21).action)
                .collect()
        };
        let mut engine = FaultEngine::new(faults(rule));
        let interleaved: Vec<Action> = (0..200)
            .map(|i| {
                for _ in 0..i % 3 {
                    engine.decide(Endpoint::VerifyV21);
                }
                engine.decide(Endpoint::IssueV21).action
            })
            .collect();
        assert_eq!(alone, interleaved);
        // and the streams differ between endpoints
        let mut engine = FaultEngine::new(faults(FaultRule {
            error_rate: 0.5,
            ..FaultRule::default()
        }));
        let verify: Vec<Action> = (0..200)
            .map(|_| engine.decide(Endpoint::VerifyV21).action)
            .collect();
        assert_ne!(alone, verify);
    }

    #[test]
    fn refusals_and_malformed_bodies_act_on_their_endpoint_only_and_when_passing() {
        let mut engine = FaultEngine::new(faults(FaultRule {
            refuse_live_rate: 1.0,
            malformed_rate: 1.0,
            ..FaultRule::default()
        }));
        let verify = engine.decide(Endpoint::VerifyV21);
        assert!(verify.refuse_live.is_some());
        assert_eq!(verify.malformed, None);
        let issue = engine.decide(Endpoint::IssueV21);
        assert!(issue.malformed.is_some());
        assert_eq!(issue.refuse_live, None);
        let list = engine.decide(Endpoint::ListKids);
        assert_eq!((list.refuse_live, list.malformed), (None, None));
        // a 500 wins over them: nothing is issued, so nothing is malformed
        let mut engine = FaultEngine::new(faults(FaultRule {
            error_rate: 1.0,
            malformed_rate: 1.0,
            ..FaultRule::default()
        }));
        let d = engine.decide(Endpoint::IssueV21);
        assert_eq!((d.action, d.malformed), (Action::Error, None));
    }

    #[test]
    fn unpinned_shapes_are_all_drawn_and_a_pinned_one_always_used() {
        let mut engine = FaultEngine::new(faults(FaultRule {
            refuse_live_rate: 1.0,
            malformed_rate: 1.0,
            ..FaultRule::default()
        }));
        let shapes: std::collections::HashSet<_> = (0..100)
            .filter_map(|_| engine.decide(Endpoint::IssueV21).malformed)
            .collect();
        assert_eq!(shapes.len(), MalformedBody::ALL.len());
        let refusals: std::collections::HashSet<_> = (0..100)
            .filter_map(|_| engine.decide(Endpoint::VerifyV21).refuse_live)
            .collect();
        assert_eq!(refusals.len(), 2);
        let mut engine = FaultEngine::new(faults(FaultRule {
            malformed_rate: 1.0,
            malformed_as: Some(MalformedBody::Html),
            refuse_live_rate: 1.0,
            refuse_live_as: Some(VerifyRefusal::Invalid),
            ..FaultRule::default()
        }));
        for _ in 0..20 {
            assert_eq!(
                engine.decide(Endpoint::IssueV21).malformed,
                Some(MalformedBody::Html)
            );
            assert_eq!(
                engine.decide(Endpoint::VerifyV21).refuse_live,
                Some(VerifyRefusal::Invalid)
            );
        }
    }

    #[test]
    fn one_endpoint_rules_set_elsewhere_are_refused_by_name() {
        let mut f = Faults::default();
        f.endpoints.insert(
            Endpoint::ListKids.path().to_owned(),
            FaultRule {
                malformed_rate: 0.5,
                ..FaultRule::default()
            },
        );
        let err = f.validate().unwrap_err().to_string();
        assert!(
            err.contains("malformed_rate") && err.contains("/oauth2/v2.1/token"),
            "{err}"
        );
        let mut f = Faults::default();
        f.endpoints.insert(
            Endpoint::IssueV21.path().to_owned(),
            FaultRule {
                refuse_live_as: Some(VerifyRefusal::Expired),
                ..FaultRule::default()
            },
        );
        let err = f.validate().unwrap_err().to_string();
        assert!(err.contains("refuse_live_rate"), "{err}");
        let mut f = Faults::default();
        f.endpoints.insert(
            Endpoint::VerifyV21.path().to_owned(),
            FaultRule {
                refuse_live_rate: 0.5,
                ..FaultRule::default()
            },
        );
        f.endpoints.insert(
            ANY_ENDPOINT.to_owned(),
            FaultRule {
                malformed_rate: 0.5,
                ..FaultRule::default()
            },
        );
        assert!(f.validate().is_ok());
        let bad = faults(FaultRule {
            malformed_rate: 2.0,
            ..FaultRule::default()
        });
        assert!(bad.validate().is_err());
    }

    #[test]
    fn every_endpoint_path_round_trips() {
        for e in Endpoint::SERVED {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
        assert_eq!(Endpoint::from_path("/_sandbox/faults"), None);
    }
}
