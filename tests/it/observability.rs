//! Observability of the real daemon (issue 5): `/metrics` scraped and
//! parsed, `/readyz` and `linetokd health` before and after the first
//! issue, JSON log lines and their fields, and the systemd notification
//! protocol as `linetokd run` speaks it.
//!
//! Every test runs the real binary against the sandbox as a process (the
//! e2e [`Lab`]) and waits on log lines, exits, replies and datagrams, never
//! on sleeps. The helpers here (a Prometheus text parser, a group's TOML,
//! HTTP calls) are shared with `reload`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::net::UnixDatagram;

use crate::e2e::harness::{CHANNEL, GROUPS, Lab, Line, PATIENCE, Proc, http_url, write_private};

/// Nothing is due for minutes after the first issuance, so what the metrics
/// and the status report say cannot change between the two reads.
pub const STEADY: &str = r#"
token_lifetime = "10m"
rotate_before = "1m"
rotation_jitter = "1s"
verify_interval = "1h"
reconcile_interval = "1h"
"#;

/// The daemon's log level in these tests: debug shows "issuing a token",
/// "sink written" and "pass done", which the tests wait on.
pub const DEBUG: &str = "debug";

// ---------------------------------------------------------------------------
// helpers shared with `reload`

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with its `_total`, `_bucket`... suffix.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed `/metrics` answer: the samples, and the `# TYPE` of each
/// family.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Family name to type (`counter`, `gauge`, `histogram`).
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses the Prometheus text format by hand: `# TYPE` lines, and
    /// `name{label="value",...} number` sample lines. Panics on anything
    /// else, so a malformed exposition fails the test.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                out.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            out.samples.push(parse_sample(line));
        }
        out
    }

    /// The samples of `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of `name` with exactly the labels `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.named(name).find(|s| s.labels == want).map(|s| s.value)
    }
}

fn parse_sample(line: &str) -> Sample {
    let bad = format!("not a Prometheus sample line: {line:?}");
    let (name_and_labels, value) = line.rsplit_once(' ').expect(&bad);
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().expect(&bad),
    };
    let (name, labels) = match name_and_labels.split_once('{') {
        None => (name_and_labels, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect(&bad);
            (name, parse_labels(body, line))
        }
    };
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// `k="v",k2="v2"` with `\\`, `\"` and `\n` escapes in values.
fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label without quotes in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// An HTTP client that never goes through a proxy (loopback only).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET url/metrics`, parsed.
pub async fn scrape(url: &str) -> Exposition {
    let response = client().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "/metrics is {content_type}"
    );
    Exposition::parse(&response.text().await.unwrap())
}

/// `GET url/readyz`: the status and the JSON body.
pub async fn readyz(url: &str) -> (u16, Value) {
    let response = client().get(format!("{url}/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A `[[channel.group]]` table for `name`, with a json sink at
/// `<lab>/sinks/<name>.json` and, when `api_key` is given, an
/// `api_key_file` holding it (written once, mode 0600).
pub fn group_toml(lab: &Lab, name: &str, api_key: Option<&str>) -> String {
    let sink = sink_path(lab, name);
    let mut toml = format!(
        "\n  [[channel.group]]\n  name = \"{name}\"\n  sinks = [{{ path = \"{}\", format = \"json\" }}]\n",
        sink.display()
    );
    if let Some(key) = api_key {
        let file = lab.dir().join(format!("{name}.apikey"));
        if !file.exists() {
            write_private(&file, key);
        }
        toml.push_str(&format!("  api_key_file = \"{}\"\n", file.display()));
    }
    toml
}

/// Where [`group_toml`] puts the group's json sink.
pub fn sink_path(lab: &Lab, group: &str) -> std::path::PathBuf {
    lab.dir().join("sinks").join(format!("{group}.json"))
}

/// A predicate: the daemon issued (and stored) a token for `group`.
pub fn issued(group: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l| l.is_with("token issued", "group", group)
}

/// A predicate: delivery wrote `group`'s sinks (its token is published).
pub fn sink_written(group: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l| l.is_with("sink written", "group", group)
}

/// Runs `linetokd ARGS` to the end; returns its exit code and output.
pub async fn linetokd(name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, Proc) {
    let mut proc = Proc::spawn(name, args, env);
    let status = proc.exit().await;
    (status.code().expect("exited, not killed"), proc)
}

/// What a finished process printed on one stream.
pub fn printed(proc: &Proc, stream: crate::e2e::harness::Stream) -> String {
    proc.lines()
        .into_iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.text + "\n")
        .collect()
}

/// `linetokd status --json --config config`.
pub async fn status_json(config: &Path) -> Value {
    let (code, proc) = linetokd(
        "status --json",
        &["status", "--json", "--config", config.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", proc.all_text());
    serde_json::from_str(&printed(&proc, crate::e2e::harness::Stream::Stdout)).unwrap()
}

/// A JSON timestamp as Unix seconds.
fn unix(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
        .timestamp()
}

// ---------------------------------------------------------------------------
// metrics

/// The name the lab's config gives its channel: the `channel_name` label
/// beside the ID in `channel`.
const CHANNEL_NAME: &str = "chan";

/// The metric families of docs/design.md section 10, with their type and the
/// label names every sample carries (histogram buckets add `le`).
const FAMILIES: [(&str, &str, &[&str]); 9] = [
    (
        "linetokd_token_expiry_timestamp_seconds",
        "gauge",
        &["channel", "channel_name", "group"],
    ),
    (
        "linetokd_next_rotation_timestamp_seconds",
        "gauge",
        &["channel", "channel_name", "group"],
    ),
    (
        "linetokd_live_tokens",
        "gauge",
        &["channel", "channel_name", "group", "kind"],
    ),
    (
        "linetokd_channel_tokens",
        "gauge",
        &["channel", "channel_name", "kind", "owner"],
    ),
    (
        "linetokd_rotations",
        "counter",
        &["channel", "channel_name", "group", "result"],
    ),
    ("linetokd_line_requests", "counter", &["endpoint", "status"]),
    (
        "linetokd_line_request_duration_seconds",
        "histogram",
        &["endpoint"],
    ),
    ("linetokd_clock_skew_seconds", "gauge", &[]),
    ("linetokd_config_reloads", "counter", &["result"]),
];

#[tokio::test]
async fn metrics_carry_the_design_names_and_agree_with_status() {
    let lab = Lab::start(STEADY, "info").await;
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let url = http_url(&daemon).await;
    let mut last = 0;
    for group in GROUPS {
        last = last.max(daemon.wait_for(0, "a token issued", issued(group)).await.0);
    }
    // The pass re-plans after each issue, so the pass that issued both
    // tokens has put them in the metrics by the time it is done.
    daemon
        .wait_for(last, "the pass done", |l| l.is("pass done"))
        .await;
    let mark = daemon.mark();
    daemon.signal("HUP");
    daemon
        .wait_for(mark, "the reload done", |l| l.is("config reloaded"))
        .await;

    let metrics = scrape(&url).await;
    let status = status_json(&lab.config).await;

    // Names, types and label sets.
    for (family, kind, labels) in FAMILIES {
        assert_eq!(
            metrics.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family} in {:?}",
            metrics.types
        );
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        let samples: Vec<&Sample> = metrics
            .samples
            .iter()
            .filter(|s| suffixes.iter().any(|x| s.name == format!("{family}{x}")))
            .collect();
        assert!(!samples.is_empty(), "no sample of {family}");
        for s in samples {
            let mut want: Vec<&str> = labels.to_vec();
            if s.name.ends_with("_bucket") {
                want.push("le");
            }
            want.sort_unstable();
            let got: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "labels of {s:?}");
        }
    }

    // Per group: the gauges are what `status` reports.
    let channel = &status["channels"][0];
    assert_eq!(channel["id"], CHANNEL);
    for group in GROUPS {
        let g = channel["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .unwrap();
        let labels = [
            ("channel", CHANNEL),
            ("channel_name", CHANNEL_NAME),
            ("group", group),
        ];
        let expiry = metrics
            .get("linetokd_token_expiry_timestamp_seconds", &labels)
            .unwrap();
        assert_eq!(expiry, unix(&g["current"]["expires_at"]) as f64, "{group}");
        let next = metrics
            .get("linetokd_next_rotation_timestamp_seconds", &labels)
            .unwrap();
        assert_eq!(next, unix(&g["next_rotation_at"]) as f64, "{group}");
        assert!(next < expiry, "{group} rotates before its token expires");
        let live = metrics
            .get(
                "linetokd_live_tokens",
                &[
                    ("channel", CHANNEL),
                    ("channel_name", CHANNEL_NAME),
                    ("group", group),
                    ("kind", "v2.1"),
                ],
            )
            .unwrap();
        assert_eq!(live, g["live_tokens"].as_f64().unwrap(), "{group}");
        assert_eq!(live, 1.0);
        let rotations = [
            ("channel", CHANNEL),
            ("channel_name", CHANNEL_NAME),
            ("group", group),
            ("result", "success"),
        ];
        assert_eq!(
            metrics.get("linetokd_rotations_total", &rotations),
            Some(1.0)
        );
    }
    // Per channel: ours and foreign.
    let ours = metrics.get(
        "linetokd_channel_tokens",
        &[
            ("channel", CHANNEL),
            ("channel_name", CHANNEL_NAME),
            ("owner", "ours"),
            ("kind", "v2.1"),
        ],
    );
    assert_eq!(ours, channel["live_ours"].as_f64());
    assert_eq!(ours, Some(2.0));
    let foreign = metrics.get(
        "linetokd_channel_tokens",
        &[
            ("channel", CHANNEL),
            ("channel_name", CHANNEL_NAME),
            ("owner", "foreign"),
            ("kind", "v2.1"),
        ],
    );
    assert_eq!(foreign, channel["foreign_live"].as_f64());
    assert_eq!(foreign, Some(0.0));

    // LINE requests: the two issues, each timed once in the histogram,
    // whose buckets only grow and end at the count.
    let issue = [("endpoint", "v21_issue"), ("status", "200")];
    assert_eq!(
        metrics.get("linetokd_line_requests_total", &issue),
        Some(2.0)
    );
    let requests: f64 = metrics
        .named("linetokd_line_requests_total")
        .map(|s| s.value)
        .sum();
    let timed: f64 = metrics
        .named("linetokd_line_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(requests, timed, "every request is timed");
    let count = metrics
        .get(
            "linetokd_line_request_duration_seconds_count",
            &[("endpoint", "v21_issue")],
        )
        .unwrap();
    let mut buckets: Vec<(f64, f64)> = metrics
        .named("linetokd_line_request_duration_seconds_bucket")
        .filter(|s| s.labels["endpoint"] == "v21_issue")
        .map(|s| {
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)));

    // The sandbox runs on this machine's clock.
    let skew = metrics.get("linetokd_clock_skew_seconds", &[]).unwrap();
    assert!(skew.abs() <= 2.0, "clock skew {skew}");
    // One reload, which worked.
    assert_eq!(
        metrics.get("linetokd_config_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.get("linetokd_config_reloads_total", &[("result", "failure")]),
        None
    );

    daemon.signal("TERM");
    daemon.exit_ok().await;
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}

// ---------------------------------------------------------------------------
// readiness and `linetokd health`

/// A loopback address no one listens on right now: the daemon is told to
/// listen there, so `linetokd health` (which reads the address from the
/// config) can find it. The port is free when chosen; the kernel does not
/// hand it out again at once.
fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `linetokd health` with the daemon's listen address from the environment.
async fn health(config: &str, listen: &str) -> (i32, Proc) {
    linetokd(
        "health",
        &["health", "--config", config],
        &[("LINETOKD__DAEMON__LISTEN", listen)],
    )
    .await
}

#[tokio::test]
async fn readiness_waits_for_the_first_issue_and_health_exit_codes_follow() {
    let lab = Lab::start(STEADY, "info").await;
    let groups: String = GROUPS.iter().map(|g| group_toml(&lab, g, None)).collect();
    lab.replace_config(&lab.config_text(STEADY, &groups));
    let config = lab.config.to_str().unwrap().to_owned();
    let listen = free_local_addr();
    let env = [("LINETOKD__DAEMON__LISTEN", listen.as_str())];

    // LINE refuses to issue at first: the window before the first issue
    // stays open until the test closes it.
    lab.set_faults(json!({"endpoints": {"/oauth2/v2.1/token": {"error_rate": 1.0}}}))
        .await;
    let mut daemon = lab.run("daemon", DEBUG, &env);
    let url = http_url(&daemon).await;
    assert_eq!(url, format!("http://{listen}"));
    daemon
        .wait_for(0, "a failed issue", |l| {
            l.field("step").is_some() && l.field("failures").as_deref() == Some("1")
        })
        .await;

    let (status, body) = readyz(&url).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    let waiting: Vec<&str> = body["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for group in GROUPS {
        let want = format!("{CHANNEL}/{group} has no live token");
        assert!(waiting.contains(&want.as_str()), "{waiting:?}");
    }
    let healthz = client().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "alive even when not ready");
    let (code, proc) = health(&config, &listen).await;
    assert_eq!(code, 1, "{}", proc.all_text());
    assert!(
        proc.all_text().contains("is not ready (503"),
        "{}",
        proc.all_text()
    );

    // LINE issues again: once both tokens are published, ready.
    lab.set_faults(json!({})).await;
    for group in GROUPS {
        daemon
            .wait_for(0, "its sink written", sink_written(group))
            .await;
    }
    let (status, body) = readyz(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ready": true}));
    let (code, proc) = health(&config, &listen).await;
    assert_eq!(code, 0, "{}", proc.all_text());
    assert_eq!(
        printed(&proc, crate::e2e::harness::Stream::Stdout),
        "ready\n"
    );

    // No daemon: exit 1, saying so.
    daemon.signal("TERM");
    daemon.exit_ok().await;
    let (code, proc) = health(&config, &listen).await;
    assert_eq!(code, 1, "{}", proc.all_text());
    let said = proc.all_text();
    assert!(
        said.contains(&format!("no linetokd daemon answers at {listen}")),
        "{said}"
    );

    // A config that cannot be used: exit 2, naming the problem.
    let (code, proc) = linetokd(
        "health (no config)",
        &[
            "health",
            "--config",
            lab.dir().join("missing.toml").to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{}", proc.all_text());
    assert!(
        proc.all_text().contains("missing.toml"),
        "{}",
        proc.all_text()
    );
    let bad = lab.dir().join("bad.toml");
    std::fs::write(
        &bad,
        lab.config_text(
            "token_lifetime = \"10m\"\nrotate_before = \"20m\"\n",
            &groups,
        ),
    )
    .unwrap();
    let (code, proc) = linetokd(
        "health (bad config)",
        &["health", "--config", bad.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{}", proc.all_text());
    assert!(
        proc.all_text().contains("rotation.rotate_before"),
        "{}",
        proc.all_text()
    );
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}

// ---------------------------------------------------------------------------
// JSON logs

/// Messages of events about one group: each carries `channel` and `group`.
const GROUP_EVENTS: [&str; 6] = [
    "issuing a token",
    "token issued",
    "token verified",
    "token revoked",
    "sink written",
    "incident declared over the control socket: revoking the group's tokens and issuing a fresh one",
];

/// Messages of events about one token: each carries `key_id` too.
const TOKEN_EVENTS: [&str; 4] = [
    "token issued",
    "token verified",
    "token revoked",
    "token served",
];

/// LINE endpoints whose requests name the channel: their "LINE request"
/// lines carry it (a verify names only the token; the rotator's "token
/// verified" line says whose it is).
const CHANNEL_ENDPOINTS: [&str; 3] = ["v21_issue", "v21_key_ids", "v21_revoke"];

/// Verifies and reconciles every couple of seconds, so their events show up
/// within the test; nothing rotates.
const BUSY: &str = r#"
token_lifetime = "10m"
rotate_before = "1m"
rotation_jitter = "1s"
verify_interval = "2s"
reconcile_interval = "2s"
"#;

/// A daemon without `[[channel]]` (one that keeps only LINE Login grants,
/// or one being set up) has nothing to work in its first pass, and was
/// never ready: `/readyz` answered 503 for good, and since the reload loop
/// waits for the first pass, neither SIGHUP nor an edit was ever applied.
#[tokio::test]
async fn a_daemon_without_channels_is_ready_and_takes_a_channel_by_reload() {
    let lab = Lab::start(STEADY, "info").await;
    let full = lab.config_text(STEADY, &group_toml(&lab, "a", None));
    let bare = full.split("[[channel]]").next().unwrap().to_owned();
    lab.replace_config(&bare);
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let url = http_url(&daemon).await;
    daemon
        .wait_for(0, "its first pass", |l| l.is("pass done"))
        .await;
    let (status, body) = readyz(&url).await;
    assert_eq!(status, 200, "{body}");

    let from = daemon.mark();
    daemon.signal("HUP");
    daemon
        .wait_for(from, "the reload", |l| l.is("config reloaded"))
        .await;
    // An edit that adds a channel is applied, and its group is issued.
    let from = daemon.mark();
    lab.replace_config(&full);
    daemon.wait_for(from, "the group issued", issued("a")).await;
    daemon
        .wait_for(from, "its sink written", sink_written("a"))
        .await;
    daemon.signal("TERM");
    daemon.exit_ok().await;
}

#[tokio::test]
async fn json_log_lines_parse_and_carry_channel_group_and_key_id() {
    let lab = Lab::start(BUSY, "info").await;
    let groups: String = GROUPS
        .iter()
        .map(|g| group_toml(&lab, g, Some(&format!("api-key-of-{g}"))))
        .collect();
    lab.replace_config(&lab.config_text(BUSY, &groups));
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let url = http_url(&daemon).await;
    for group in GROUPS {
        daemon
            .wait_for(0, "its sink written", sink_written(group))
            .await;
        daemon
            .wait_for(0, "its token verified", |l| {
                l.is_with("token verified", "group", group)
            })
            .await;
    }
    daemon
        .wait_for(0, "a reconcile", |l| l.is("reconciled with LINE"))
        .await;

    // The token API, a reload and an incident add their events.
    let served = client()
        .get(format!("{url}/v1/channels/{CHANNEL}/groups/a/token"))
        .bearer_auth("api-key-of-a")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let mark = daemon.mark();
    daemon.signal("HUP");
    daemon
        .wait_for(mark, "the reload done", |l| l.is("config reloaded"))
        .await;
    let mark = daemon.mark();
    let config = lab.config.to_str().unwrap();
    let (code, revoke) = linetokd(
        "revoke",
        &[
            "revoke",
            "--channel",
            CHANNEL,
            "--group",
            "a",
            "--config",
            config,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", revoke.all_text());
    daemon
        .wait_for(mark, "a revoke", |l| {
            l.is_with("token revoked", "group", "a")
        })
        .await;
    daemon.wait_for(mark, "a fresh token", issued("a")).await;
    daemon.signal("TERM");
    daemon.exit_ok().await;

    let lines = daemon.lines();
    let mut seen = BTreeMap::<&str, usize>::new();
    for line in &lines {
        let json: serde_json::Map<String, Value> = serde_json::from_str(&line.text)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {}", line.text));
        for field in ["timestamp", "level", "message"] {
            assert!(json.contains_key(field), "no {field}: {}", line.text);
        }
        let message = json["message"].as_str().unwrap();
        let has = |f: &str| json.get(f).is_some_and(|v| !v.is_null());
        if has("group") || has("key_id") {
            assert!(
                has("channel"),
                "a group or token without its channel: {}",
                line.text
            );
        }
        if let Some(m) = GROUP_EVENTS.iter().find(|m| **m == message) {
            *seen.entry(m).or_default() += 1;
            assert!(has("channel") && has("group"), "{}", line.text);
        }
        if message == "LINE request" {
            let endpoint = json["endpoint"].as_str().unwrap();
            *seen.entry("LINE request").or_default() += 1;
            if CHANNEL_ENDPOINTS.contains(&endpoint) {
                assert_eq!(json.get("channel"), Some(&json!(CHANNEL)), "{}", line.text);
            }
        }
        if let Some(m) = TOKEN_EVENTS.iter().find(|m| **m == message) {
            *seen.entry(m).or_default() += 1;
            assert!(
                has("channel") && has("group") && has("key_id"),
                "{}",
                line.text
            );
        }
    }
    for m in GROUP_EVENTS
        .iter()
        .chain(TOKEN_EVENTS.iter())
        .chain(&["LINE request"])
    {
        assert!(seen.contains_key(m), "no {m:?} event in the run: {seen:?}");
    }
    lab.assert_nothing_secret_printed(&[&daemon, &revoke]).await;
}

// ---------------------------------------------------------------------------
// systemd notifications

/// The manager's end of `NOTIFY_SOCKET`: every datagram, in order.
struct Manager {
    socket: UnixDatagram,
}

impl Manager {
    fn bind(path: &Path) -> Self {
        Self {
            socket: UnixDatagram::bind(path).unwrap(),
        }
    }

    /// The next message that is not a watchdog ping; counts the pings
    /// passed on the way into `pings`.
    async fn next(&self, pings: &mut usize) -> String {
        loop {
            let message = self.recv().await;
            if message == "WATCHDOG=1" {
                *pings += 1;
            } else {
                return message;
            }
        }
    }

    async fn recv(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, self.socket.recv(&mut buf))
            .await
            .expect("a notification within the patience")
            .unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
}

#[tokio::test]
async fn run_notifies_ready_after_the_first_issue_reloading_stopping_in_order_and_pings() {
    let lab = Lab::start(STEADY, "info").await;
    let socket = lab.dir().join("notify.sock");
    let manager = Manager::bind(&socket);
    let mut daemon = lab.run(
        "daemon",
        DEBUG,
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut pings = 0;

    assert_eq!(manager.next(&mut pings).await, "READY=1");
    // The first pass issued both tokens before it ended.
    let issued_at_ready = lab.tokens().await;
    assert_eq!(issued_at_ready.len(), GROUPS.len(), "{issued_at_ready:?}");
    // Pings every second (half of 2 s): wait for two.
    while pings < 2 {
        assert_eq!(manager.recv().await, "WATCHDOG=1");
        pings += 1;
    }

    daemon.signal("HUP");
    let reloading = manager.next(&mut pings).await;
    let mut fields = reloading.lines();
    assert_eq!(fields.next(), Some("RELOADING=1"), "{reloading}");
    let usec = fields
        .next()
        .and_then(|f| f.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    assert_eq!(manager.next(&mut pings).await, "READY=1");

    daemon.signal("TERM");
    assert_eq!(manager.next(&mut pings).await, "STOPPING=1");
    daemon.exit_ok().await;
    // Nothing after STOPPING=1 but, at most, pings.
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = manager.socket.try_recv(&mut buf) {
        rest.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    assert!(rest.iter().all(|m| m == "WATCHDOG=1"), "{rest:?}");
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}
