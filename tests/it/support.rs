//! Shared test helpers: a fixed start time and manual clock, a signer over
//! the fixture key, a LINE client, serving an axum app on 127.0.0.1:0, a
//! recording [`Mock`] LINE, and [`SandboxLab`]: the real sandbox on a fresh
//! port with one channel whose key is registered.
//!
//! Everything here binds port 0, talks to loopback only and stops when
//! dropped, so tests run in parallel without sharing anything.

#![allow(dead_code)] // Each test module uses its own subset.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use linetokd::clock::{Clock as _, ManualClock, SharedClock};
use linetokd::domain::{ChannelId, ChannelSecret, SigningKid};
use linetokd::line::jwt::AssertionSigner;
use linetokd::line::keys::{SigningKey, VerifyingKey};
use linetokd::line::{LineClient, LineClientConfig};
use linetokd::sandbox::Sandbox;
use linetokd::store::{AlertRecord, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// 2026-03-01T00:00:00Z: where manual clocks start.
pub fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_772_323_200, 0).unwrap()
}

/// A manual clock at [`start_time`].
pub fn manual_clock() -> ManualClock {
    ManualClock::new(start_time())
}

/// The repository's RSA-2048 fixture key (loading it is much faster than
/// generating one).
pub fn fixture_key() -> SigningKey {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem");
    SigningKey::from_file(&path).unwrap()
}

/// A signer for `channel` with the fixture key registered as `kid`.
pub fn signer(channel: &str, kid: &str) -> AssertionSigner {
    AssertionSigner::new(ChannelId::new(channel), SigningKid::new(kid), fixture_key())
}

/// A LINE client for `base_url` on `clock`, with the given timeout.
pub fn line_client(base_url: &str, clock: &ManualClock, timeout: Duration) -> LineClient {
    let config = LineClientConfig {
        base_url: base_url.to_owned(),
        timeout,
        observer: None,
    };
    let clock: SharedClock = Arc::new(clock.clone());
    LineClient::new(config, clock).unwrap()
}

/// A rotator for the one channel `setup` over `store` (its config synced
/// at `clock`'s now), talking to LINE at `base_url` with a 10 s timeout,
/// working one channel at a time with a fixed seed.
pub fn one_channel_rotator(
    store: &Store,
    base_url: &str,
    clock: &ManualClock,
    rules: linetokd::policy::Rules,
    setup: linetokd::rotator::ChannelSetup,
    seed: u64,
) -> Arc<linetokd::rotator::Rotator> {
    store
        .sync_config(
            clock.now(),
            &[linetokd::store::ChannelSpec {
                id: setup.id.clone(),
                name: setup.name.clone(),
                groups: setup.groups.clone(),
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
    linetokd::rotator::Rotator::new(linetokd::rotator::RotatorParts {
        store: store.clone(),
        line: line_client(base_url, clock, Duration::from_secs(10)),
        clock: Arc::new(clock.clone()),
        rules,
        channels: vec![setup],
        concurrency: 1,
        seed: Some(seed),
        metrics: linetokd::metrics::Metrics::shared(),
        leadership: None,
    })
}

/// Waits (at most 30 s) until the alerts firing in `store` satisfy `pred`
/// and returns them. Meanwhile, when `clock` is given, moves it to each
/// deadline something sleeps on (a sink retry, a hook's backoff), so what
/// runs on the clock gets there. Wakes on [`Store::subscribe_alerts`], never
/// on a timer: it subscribes before its first look, so no change is missed.
pub async fn firing_until(
    store: &Store,
    clock: Option<&ManualClock>,
    pred: impl Fn(&[AlertRecord]) -> bool,
) -> Vec<AlertRecord> {
    let mut changed = store.subscribe_alerts();
    let wait = async {
        loop {
            let firing = store.firing_alerts().unwrap();
            if pred(&firing) {
                return firing;
            }
            let deadline = async {
                match clock {
                    Some(clock) => clock.next_deadline().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changed.changed() => changed.unwrap(),
                due = deadline => {
                    let clock = clock.expect("only a clock has deadlines");
                    if due > clock.now() {
                        clock.set(due);
                    }
                    // A woken sleeper stays listed until its task runs: let it.
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(firing) => firing,
        Err(_) => panic!(
            "the firing alerts did not reach the expected state within 30 s: {:#?}",
            store.firing_alerts().unwrap()
        ),
    }
}

/// An axum app served on 127.0.0.1:0 until dropped.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a fresh loopback port.
pub async fn serve(app: Router) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Served {
        base_url: format!("http://{addr}"),
        task,
    }
}

/// Asserts that no rendering of `err` (Display, alternate Display, Debug,
/// and every source in its chain) contains any of `secrets`.
pub fn assert_leaks_nothing(err: &(dyn std::error::Error + 'static), secrets: &[&str]) {
    let mut shown = vec![
        format!("{err}"),
        format!("{err:#}"),
        format!("{err:?}"),
        format!("{err:#?}"),
    ];
    let mut source = err.source();
    while let Some(s) = source {
        shown.push(format!("{s}"));
        shown.push(format!("{s:?}"));
        source = s.source();
    }
    for text in &shown {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !text.contains(secret),
                "error output leaks a secret: {text}"
            );
        }
    }
}

/// One request a [`Mock`] received, decoded.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// The decoded form pairs, in order (empty unless a form was sent).
    pub form: Vec<(String, String)>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// Whether an `Authorization` header was sent.
    pub authorization: bool,
    /// The `Authorization` header's value, when sent.
    pub authorization_value: Option<String>,
    /// The body, when a JSON body was sent.
    pub json: Option<serde_json::Value>,
}

impl Seen {
    /// The value of query or form key `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(&self.form)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every query and form value, JSON string value and the
    /// `Authorization` header: the credentials a request carried.
    pub fn values(&self) -> Vec<String> {
        let json_strings = self
            .json
            .iter()
            .flat_map(|j| j.as_object().into_iter().flat_map(|o| o.values()))
            .filter_map(|v| v.as_str().map(str::to_owned));
        self.query
            .iter()
            .chain(&self.form)
            .map(|(_, v)| v.clone())
            .chain(json_strings)
            .chain(self.authorization_value.clone())
            .collect()
    }
}

/// What a [`Mock`] answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_owned(),
        }
    }

    /// An answer with no body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Adds (or replaces) a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type ReplyFn = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A fake LINE that records every request and answers with a function of it.
pub struct Mock {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    _served: Served,
}

impl Mock {
    /// Starts a mock answering every request with `reply(&request)`.
    pub async fn start(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reply: Arc<ReplyFn> = Arc::new(reply);
        let log = seen.clone();
        let app = Router::new().fallback(move |request: axum::extract::Request| {
            let log = log.clone();
            let reply = reply.clone();
            async move {
                let seen = decode(request).await;
                let answer = reply(&seen);
                log.lock().unwrap().push(seen);
                let mut response =
                    axum::response::Response::new(axum::body::Body::from(answer.body));
                *response.status_mut() = axum::http::StatusCode::from_u16(answer.status).unwrap();
                for (name, value) in answer.headers {
                    response.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        axum::http::HeaderValue::from_str(&value).unwrap(),
                    );
                }
                response
            }
        });
        let served = serve(app).await;
        Self {
            base_url: served.base_url.clone(),
            seen,
            _served: served,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received so far.
    pub fn one(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen.into_iter().next().unwrap()
    }
}

async fn decode(request: axum::extract::Request) -> Seen {
    let (parts, body) = request.into_parts();
    let header = |name: axum::http::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(axum::http::header::CONTENT_TYPE);
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut json = None;
    let form = if content_type.as_deref() == Some("application/x-www-form-urlencoded") {
        pairs(std::str::from_utf8(&body).unwrap())
    } else if content_type.as_deref() == Some("application/json") {
        json = Some(serde_json::from_slice(&body).unwrap());
        Vec::new()
    } else {
        assert!(body.is_empty(), "unexpected non-form body");
        Vec::new()
    };
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: pairs(parts.uri.query().unwrap_or("")),
        form,
        content_type,
        authorization: parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION),
        authorization_value: header(axum::http::header::AUTHORIZATION),
        json,
    }
}

/// Decodes `a=1&b=2` (form-urlencoded) into pairs.
fn pairs(encoded: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://decode.invalid/?{encoded}")).unwrap();
    if encoded.is_empty() {
        return Vec::new();
    }
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The channel a [`SandboxLab`] registers.
pub const LAB_CHANNEL: &str = "1234567890";
/// Its channel secret.
pub const LAB_SECRET: &str = "lab-channel-SECRET-0123456789abcdef";
/// The `kid` its fixture key is registered under.
pub const LAB_KID: &str = "5e0d1c2b-lab-kid";

/// The sandbox served on 127.0.0.1:0 with one channel ([`LAB_CHANNEL`],
/// [`LAB_SECRET`], the fixture key as [`LAB_KID`]), a manual clock shared
/// with a LINE client, and a signer. Dropping it shuts the sandbox down.
pub struct SandboxLab {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The sandbox itself, for inspection and faults.
    pub sandbox: Sandbox,
    /// The clock the sandbox and [`Self::client`] share.
    pub clock: ManualClock,
    /// A client for the sandbox (10 s timeout).
    pub client: LineClient,
    /// A signer for the channel with its registered key.
    pub signer: AssertionSigner,
    shutdown: CancellationToken,
}

impl SandboxLab {
    /// The lab's channel ID.
    pub fn channel(&self) -> ChannelId {
        ChannelId::new(LAB_CHANNEL)
    }

    /// The lab's channel secret.
    pub fn secret(&self) -> ChannelSecret {
        ChannelSecret::new(LAB_SECRET)
    }

    /// A client for the sandbox on its own clock (to model skew) and timeout.
    pub fn client_with(&self, clock: &ManualClock, timeout: Duration) -> LineClient {
        line_client(&self.base_url, clock, timeout)
    }
}

impl Drop for SandboxLab {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a [`SandboxLab`].
pub async fn sandbox_lab() -> SandboxLab {
    let clock = manual_clock();
    let sandbox = Sandbox::empty(Arc::new(clock.clone()));
    let public =
        VerifyingKey::parse(fixture_key().public_jwk().to_json_pretty().as_bytes()).unwrap();
    sandbox
        .register_channel(
            ChannelId::new(LAB_CHANNEL),
            ChannelSecret::new(LAB_SECRET),
            vec![(SigningKid::new(LAB_KID), public)],
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(sandbox.clone().serve(listener, shutdown.clone()));
    SandboxLab {
        client: line_client(&base_url, &clock, Duration::from_secs(10)),
        signer: signer(LAB_CHANNEL, LAB_KID),
        base_url,
        sandbox,
        clock,
        shutdown,
    }
}
