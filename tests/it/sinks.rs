//! File sinks: each format's exact content and mode, owner and group,
//! atomic replacement under a reader in a tight loop, removal, and errors
//! that name the path and step but never the token.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{DateTime, Duration, Utc};
use linetokd::delivery::sink::{
    self, AccountKind, SinkContext, SinkError, SinkFormat, SinkSpec, SinkStep,
};
use linetokd::delivery::{GroupTokens, PublishedToken};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};

use crate::support::assert_leaks_nothing;

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
}

fn published(token: &str, key_id: &str, issued: &str, expires: &str) -> PublishedToken {
    PublishedToken {
        key_id: KeyId::new(key_id),
        token: AccessToken::new(token),
        issued_at: at(issued),
        expires_at: at(expires),
    }
}

/// A group whose current token replaced a still-live previous one.
fn rotated() -> GroupTokens {
    let old = published(
        "eyJhbGciOiJIUzI1NiJ9.OLD.token-sig_1",
        "kid-old",
        "2025-01-01T00:00:00Z",
        "2025-01-31T00:00:00Z",
    );
    // Sub-second precision is dropped in the files.
    let new = PublishedToken {
        issued_at: at("2025-01-20T08:30:00Z") + Duration::milliseconds(250),
        ..published(
            "eyJhbGciOiJIUzI1NiJ9.NEW.token-sig_2",
            "kid-new",
            "2025-01-20T08:30:00Z",
            "2025-02-19T08:30:00Z",
        )
    };
    GroupTokens::default()
        .with_new(old, at("2025-01-01T00:00:00Z"))
        .with_new(new, at("2025-01-20T08:30:00Z"))
}

fn spec(path: PathBuf, format: SinkFormat, mode: u32) -> SinkSpec {
    SinkSpec {
        path,
        format,
        mode,
        owner: None,
        group: None,
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry of `dir`, sorted: shows leftover temporary files.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn channel() -> ChannelId {
    ChannelId::new("1234567890")
}

fn group() -> GroupName {
    GroupName::new("backend")
}

#[test]
fn raw_is_the_token_alone_without_a_newline_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.txt");
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    sink::write(&spec(path.clone(), SinkFormat::Raw, 0o600), &ctx).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"eyJhbGciOiJIUzI1NiJ9.NEW.token-sig_2"
    );
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(entries(dir.path()), ["backend.txt"]);
}

#[test]
fn json_has_current_and_previous_with_key_ids_and_times_mode_0640() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.json");
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    sink::write(&spec(path.clone(), SinkFormat::Json, 0o640), &ctx).unwrap();
    let expected = r#"{
  "access_token": "eyJhbGciOiJIUzI1NiJ9.NEW.token-sig_2",
  "token_type": "Bearer",
  "key_id": "kid-new",
  "expires_at": "2025-02-19T08:30:00Z",
  "issued_at": "2025-01-20T08:30:00Z",
  "channel": "1234567890",
  "group": "backend",
  "previous": {
    "access_token": "eyJhbGciOiJIUzI1NiJ9.OLD.token-sig_1",
    "key_id": "kid-old",
    "expires_at": "2025-01-31T00:00:00Z"
  }
}
"#;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    assert_eq!(mode_of(&path), 0o640);

    // Without a previous token, `previous` is null (present, so a client
    // can tell "none" from "old file format").
    let first = GroupTokens::default().with_new(
        published(
            "tok.FIRST",
            "kid-1",
            "2025-01-01T00:00:00Z",
            "2025-01-31T00:00:00Z",
        ),
        at("2025-01-01T00:00:00Z"),
    );
    let ctx = SinkContext {
        tokens: &first,
        ..ctx
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&sink::render(SinkFormat::Json, &ctx).unwrap()).unwrap();
    assert_eq!(doc["access_token"], "tok.FIRST");
    assert_eq!(doc["previous"], serde_json::Value::Null);
    assert!(doc.as_object().unwrap().contains_key("previous"));
}

#[test]
fn env_is_three_unquoted_lines_for_systemd_and_docker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.env");
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    sink::write(&spec(path.clone(), SinkFormat::Env, 0o600), &ctx).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "LINE_CHANNEL_ACCESS_TOKEN=eyJhbGciOiJIUzI1NiJ9.NEW.token-sig_2\n\
         LINE_CHANNEL_ACCESS_TOKEN_KEY_ID=kid-new\n\
         LINE_CHANNEL_ACCESS_TOKEN_EXPIRES_AT=2025-02-19T08:30:00Z\n"
    );
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn env_refuses_a_value_that_would_need_quoting_and_does_not_show_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.env");
    let bad = "tok with space$HOME";
    let tokens = GroupTokens::default().with_new(
        published(bad, "kid-1", "2025-01-01T00:00:00Z", "2025-01-31T00:00:00Z"),
        at("2025-01-01T00:00:00Z"),
    );
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    let err = sink::write(&spec(path.clone(), SinkFormat::Env, 0o600), &ctx).unwrap_err();
    assert!(
        matches!(err, SinkError::UnsafeEnvValue { field: "token", .. }),
        "{err:?}"
    );
    assert_leaks_nothing(&err, &[bad, "with space"]);
    assert!(!path.exists());
    // The same token is fine in the raw and json formats.
    sink::write(&spec(path.clone(), SinkFormat::Json, 0o600), &ctx).unwrap();
}

#[test]
fn the_configured_mode_is_exact_whatever_the_old_file_or_umask_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.txt");
    std::fs::write(&path, "stale").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    // Set-id bits are not permission bits: dropped.
    sink::write(&spec(path.clone(), SinkFormat::Raw, 0o4640), &ctx).unwrap();
    assert_eq!(mode_of(&path), 0o640);
    sink::write(&spec(path.clone(), SinkFormat::Raw, 0o400), &ctx).unwrap();
    assert_eq!(mode_of(&path), 0o400);
}

#[test]
fn a_group_without_a_token_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.txt");
    let empty = GroupTokens::default();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &empty,
    };
    for format in [SinkFormat::Raw, SinkFormat::Json, SinkFormat::Env] {
        let err = sink::write(&spec(path.clone(), format, 0o600), &ctx).unwrap_err();
        assert!(matches!(err, SinkError::NoCurrentToken { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("backend") && shown.contains("1234567890"),
            "{shown}"
        );
    }
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn missing_parent_directories_are_created_0755_and_existing_ones_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let path = dir.path().join("run/shop-bot/backend.json");
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    sink::write(&spec(path.clone(), SinkFormat::Json, 0o600), &ctx).unwrap();
    assert_eq!(mode_of(&dir.path().join("run")), 0o755);
    assert_eq!(mode_of(&dir.path().join("run/shop-bot")), 0o755);
    assert_eq!(mode_of(dir.path()), 0o711);
    assert_eq!(mode_of(&path), 0o600);
}

/// Our uid and gid, as the owner of a file we just made (no libc needed).
fn own_ids(dir: &Path) -> (u32, u32) {
    let probe = dir.join("probe");
    std::fs::write(&probe, "").unwrap();
    let meta = std::fs::metadata(&probe).unwrap();
    std::fs::remove_file(&probe).unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn owner_and_group_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = own_ids(dir.path());
    let path = dir.path().join("backend.txt");
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };

    // Anyone may "give" a file to themselves.
    let mut mine = spec(path.clone(), SinkFormat::Raw, 0o640);
    mine.owner = Some(uid.to_string());
    mine.group = Some(gid.to_string());
    sink::write(&mine, &ctx).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));

    let mut other = spec(path.clone(), SinkFormat::Raw, 0o640);
    if uid == 0 {
        // Root gives it away for real.
        other.owner = Some("65534".into());
        other.group = Some("65533".into());
        sink::write(&other, &ctx).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65533));
        assert_eq!(mode_of(&path), 0o640);
    } else {
        // Anyone else is refused, with the step named and nothing left.
        other.owner = Some("0".into());
        let err = sink::write(&other, &ctx).unwrap_err();
        assert!(
            matches!(
                &err,
                SinkError::Io {
                    step: SinkStep::ChangeOwner { uid: Some(0), .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("needs root"), "{err}");
        assert_eq!(entries(dir.path()), ["backend.txt"]);
    }
}

#[test]
fn owner_by_name_is_looked_up_in_etc_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = own_ids(dir.path());
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let accounts: Vec<(String, u32)> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect();
    // Root proves the lookup by giving the file to someone else; anyone
    // else can only name themselves.
    let Some((name, want)) = accounts
        .iter()
        .find(|(_, id)| if uid == 0 { *id != 0 } else { *id == uid })
        .cloned()
    else {
        panic!("/etc/passwd has no usable entry for this test (uid {uid})");
    };
    let path = dir.path().join("backend.txt");
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    let mut named = spec(path.clone(), SinkFormat::Raw, 0o600);
    named.owner = Some(name);
    sink::write(&named, &ctx).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), want);
}

#[test]
fn an_unknown_user_or_group_name_is_a_clear_error_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.txt");
    std::fs::write(&path, "old").unwrap();
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };

    let mut s = spec(path.clone(), SinkFormat::Raw, 0o600);
    s.owner = Some("no-such-user-linetokd".into());
    let err = sink::write(&s, &ctx).unwrap_err();
    assert!(
        matches!(&err, SinkError::UnknownAccount { kind: AccountKind::User, name, database: "/etc/passwd", .. } if name == "no-such-user-linetokd"),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("no-such-user-linetokd")
            && shown.contains("/etc/passwd")
            && shown.contains(&path.display().to_string()),
        "{shown}"
    );

    let mut s = spec(path.clone(), SinkFormat::Raw, 0o600);
    s.group = Some("no-such-group-linetokd".into());
    let err = sink::write(&s, &ctx).unwrap_err();
    assert!(
        matches!(
            &err,
            SinkError::UnknownAccount {
                kind: AccountKind::Group,
                database: "/etc/group",
                ..
            }
        ),
        "{err:?}"
    );

    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    assert_eq!(entries(dir.path()), ["backend.txt"]);
}

#[test]
fn a_failed_replace_names_the_step_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: rename cannot replace it.
    let path = dir.path().join("backend.txt");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), "x").unwrap();
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    let err = sink::write(&spec(path.clone(), SinkFormat::Raw, 0o600), &ctx).unwrap_err();
    assert!(
        matches!(
            &err,
            SinkError::Io {
                step: SinkStep::Rename,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(entries(dir.path()), ["backend.txt"]);
    assert_eq!(entries(&path), ["keep"]);
}

#[test]
fn remove_deletes_the_file_and_tolerates_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.json");
    let s = spec(path.clone(), SinkFormat::Json, 0o600);
    let tokens = rotated();
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    sink::write(&s, &ctx).unwrap();
    assert!(path.exists());
    sink::remove(&s).unwrap();
    assert!(!path.exists());
    sink::remove(&s).unwrap();
    // Even its directory may be gone (a tmpfs after reboot).
    sink::remove(&spec(
        dir.path().join("gone/x.json"),
        SinkFormat::Json,
        0o600,
    ))
    .unwrap();
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn errors_never_contain_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = rotated();
    let secrets = [
        "eyJhbGciOiJIUzI1NiJ9.NEW.token-sig_2",
        "eyJhbGciOiJIUzI1NiJ9.OLD.token-sig_1",
        "NEW.token",
    ];
    let ctx = SinkContext {
        channel: &channel(),
        group: &group(),
        tokens: &tokens,
    };
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let target_dir = dir.path().join("a-dir");
    std::fs::create_dir_all(target_dir.join("inside")).unwrap();

    let mut unknown = spec(dir.path().join("t.json"), SinkFormat::Json, 0o600);
    unknown.owner = Some("no-such-user-linetokd".into());
    let errors = [
        // A parent that is a file.
        sink::write(&spec(blocker.join("t.json"), SinkFormat::Json, 0o600), &ctx).unwrap_err(),
        // A target that is a directory.
        sink::write(&spec(target_dir.clone(), SinkFormat::Env, 0o600), &ctx).unwrap_err(),
        sink::write(&unknown, &ctx).unwrap_err(),
        sink::write(&spec(PathBuf::from("/"), SinkFormat::Raw, 0o600), &ctx).unwrap_err(),
        sink::remove(&spec(target_dir, SinkFormat::Raw, 0o600)).unwrap_err(),
    ];
    for err in &errors {
        assert_leaks_nothing(err, &secrets);
    }
    assert!(
        matches!(
            &errors[0],
            SinkError::Io {
                step: SinkStep::CreateTemporary | SinkStep::CreateDirectory(_),
                ..
            }
        ),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(
            &errors[4],
            SinkError::Io {
                step: SinkStep::Remove,
                ..
            }
        ),
        "{:?}",
        errors[4]
    );
}

/// The token set after `n` rotations.
fn generation(n: usize) -> PublishedToken {
    let issued = at("2025-01-01T00:00:00Z") + Duration::minutes(n as i64);
    PublishedToken {
        key_id: KeyId::new(format!("kid-{n}")),
        token: AccessToken::new(format!("eyJhbGciOiJSUzI1NiJ9.gen{n:04}.sig-{n}_x")),
        issued_at: issued,
        expires_at: issued + Duration::days(30),
    }
}

#[test]
fn a_reader_in_a_tight_loop_never_sees_a_partial_empty_or_missing_file() {
    const ROTATIONS: usize = 500;
    const CHECK_EVERY: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let channel = channel();
    let group = group();
    let specs: Vec<SinkSpec> = [
        ("t.txt", SinkFormat::Raw),
        ("t.json", SinkFormat::Json),
        ("t.env", SinkFormat::Env),
    ]
    .into_iter()
    .map(|(name, format)| spec(dir.path().join(name), format, 0o600))
    .collect();

    // Every state the group passes through, and each sink's exact bytes
    // for it: a read must match one of them byte for byte.
    let mut states = Vec::with_capacity(ROTATIONS + 1);
    let mut tokens = GroupTokens::default();
    for n in 0..=ROTATIONS {
        let now = generation(n).issued_at;
        tokens = tokens.with_new(generation(n), now);
        states.push(tokens.clone());
    }
    let render_all = |s: &SinkSpec| -> HashSet<Vec<u8>> {
        states
            .iter()
            .map(|t| {
                let ctx = SinkContext {
                    channel: &channel,
                    group: &group,
                    tokens: t,
                };
                sink::render(s.format, &ctx).unwrap()
            })
            .collect()
    };

    // The first state is on disk before any reader starts: from then on
    // the file must always be there.
    for s in &specs {
        let ctx = SinkContext {
            channel: &channel,
            group: &group,
            tokens: &states[0],
        };
        sink::write(s, &ctx).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = specs
        .iter()
        .map(|s| {
            let valid = render_all(s);
            let path = s.path.clone();
            let stop = Arc::clone(&stop);
            let reads = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&reads);
            let handle = std::thread::spawn(move || {
                let mut seen = HashSet::new();
                loop {
                    // Read the flag first so the last read is after the
                    // last write.
                    let last = stop.load(Ordering::SeqCst);
                    let bytes = std::fs::read(&path)
                        .unwrap_or_else(|e| panic!("{} was missing: {e}", path.display()));
                    assert!(!bytes.is_empty(), "{} was empty", path.display());
                    assert!(
                        valid.contains(&bytes),
                        "{} held bytes that are no complete rendering ({} bytes)",
                        path.display(),
                        bytes.len()
                    );
                    seen.insert(bytes);
                    counter.fetch_add(1, Ordering::SeqCst);
                    if last {
                        return seen.len();
                    }
                }
            });
            (handle, reads)
        })
        .collect();

    for (n, state) in states.iter().enumerate().skip(1) {
        for s in &specs {
            let ctx = SinkContext {
                channel: &channel,
                group: &group,
                tokens: state,
            };
            sink::write(s, &ctx).unwrap();
        }
        if n % CHECK_EVERY == 0 {
            // Make sure every reader really runs between our writes (not
            // only before or after them): wait for two more reads each. The
            // second starts after this rotation and before the next, so it
            // sees exactly state `n`.
            for (handle, reads) in &readers {
                let before = reads.load(Ordering::SeqCst);
                while reads.load(Ordering::SeqCst) < before + 2 && !handle.is_finished() {
                    std::thread::yield_now();
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for (handle, _) in readers {
        let distinct = handle.join().expect("a reader saw a bad file");
        // Each checkpoint's state was seen, so at least one per checkpoint.
        assert!(distinct >= ROTATIONS / CHECK_EVERY, "{distinct}");
    }

    let last = SinkContext {
        channel: &channel,
        group: &group,
        tokens: &states[ROTATIONS],
    };
    for s in &specs {
        assert_eq!(
            std::fs::read(&s.path).unwrap(),
            sink::render(s.format, &last).unwrap()
        );
    }
    assert_eq!(entries(dir.path()), ["t.env", "t.json", "t.txt"]);
}

// ---------------------------------------------------------------------------
// The delivery service: stale temporaries at start, failing sinks retried
// with backoff on the manual clock and reported (health, readiness text,
// metrics, the status note), and rewritten once the path is fixed.

mod service {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration as StdDuration;

    use chrono::Duration;
    use linetokd::clock::{Clock as _, SharedClock};
    use linetokd::delivery::hook::HookRetry;
    use linetokd::delivery::hook::{HookSpec, inherited_env};
    use linetokd::delivery::sink::{SinkFormat, SinkSpec};
    use linetokd::delivery::{Delivery, GroupDelivery, SinkBoard, SinkHealth, TokenBook};
    use linetokd::domain::{AccessToken, GroupName, KeyId};
    use linetokd::metrics::Metrics;
    use linetokd::policy::IssueReason;
    use linetokd::policy::RevokeReason;
    use linetokd::rotator::RotationEvent;
    use linetokd::store::sink_note_key;
    use linetokd::store::{AlertLabel, AlertRecord, AlertScope, AlertSpec, EventKind, Store};
    use tokio::sync::{broadcast, watch};
    use tokio_util::sync::CancellationToken;

    use super::{channel, entries, group};
    use crate::support;

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.retry-test.token-sig";

    /// Waits (bounded) until the group's sink health satisfies `pred`.
    async fn health_until(
        health: &mut watch::Receiver<SinkBoard>,
        pred: impl Fn(&SinkHealth) -> bool,
    ) -> SinkHealth {
        let key = (channel(), group());
        let board = tokio::time::timeout(
            StdDuration::from_secs(30),
            health.wait_for(|b| b.get(&key).is_some_and(&pred)),
        )
        .await
        .expect("the sinks did not reach the expected state within 30 s")
        .unwrap();
        board[&key].clone()
    }

    fn temp_name(dir: &Path, sink: &str, hex: &str) -> std::path::PathBuf {
        dir.join(format!(".{sink}.{hex}.linetokd-tmp"))
    }

    #[tokio::test]
    async fn a_failing_sink_is_retried_with_backoff_reported_and_rewritten_once_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let path = out.join("backend.json");
        // A directory where the file should be: the rename over it fails,
        // even for root (a read-only directory would not stop root).
        std::fs::create_dir(&path).unwrap();
        // What a `kill -9` during a write leaves: ours goes at start, the
        // rest stays (another name, not our pattern, not a file).
        let stale = temp_name(&out, "backend.json", "0123456789abcdef");
        std::fs::write(&stale, "stale-token").unwrap();
        let others = [
            temp_name(&out, "other.json", "0123456789abcdef"),
            temp_name(&out, "backend.json", "not-hex-at-all!!"),
            out.join("backend.json.0123456789abcdef.linetokd-tmp"),
        ];
        for other in &others {
            std::fs::write(other, "not ours").unwrap();
        }
        std::fs::create_dir(temp_name(&out, "backend.json", "fedcba9876543210")).unwrap();

        let clock = support::manual_clock();
        let shared: SharedClock = Arc::new(clock.clone());
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let metrics = Metrics::shared();
        let groups = HashMap::from([(
            (channel(), group()),
            GroupDelivery {
                sinks: vec![SinkSpec {
                    path: path.clone(),
                    format: SinkFormat::Json,
                    mode: 0o600,
                    owner: None,
                    group: None,
                }],
                hook: None,
            },
        )]);
        let delivery = Delivery::new(
            TokenBook::new(),
            store.clone(),
            shared,
            Arc::clone(&metrics),
            groups,
            HookRetry::default(),
        );
        delivery.load().await.unwrap();
        assert!(!stale.exists(), "the leftover temporary file was kept");
        assert_eq!(
            entries(&out),
            [
                ".backend.json.fedcba9876543210.linetokd-tmp",
                ".backend.json.not-hex-at-all!!.linetokd-tmp",
                ".other.json.0123456789abcdef.linetokd-tmp",
                "backend.json",
                "backend.json.0123456789abcdef.linetokd-tmp",
            ]
        );

        let (events, receiver) = broadcast::channel(16);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(Arc::clone(&delivery).run(receiver, shutdown.clone()));
        let mut health = delivery.sink_health();
        let start = clock.now();
        events
            .send(RotationEvent::Issued {
                channel: channel(),
                group: group(),
                key_id: KeyId::new("kid-retry"),
                token: AccessToken::new(TOKEN),
                issued_at: start,
                expires_at: start + Duration::days(30),
                reason: IssueReason::NoCurrent,
                verified: true,
                condemned: Vec::new(),
            })
            .unwrap();

        // Three failed rounds, 1 s then 2 s then 4 s apart on the clock.
        let mut waits = Vec::new();
        for round in 1..=3u32 {
            let h = health_until(&mut health, |h| h.rounds == u64::from(round)).await;
            assert_eq!(h.failed_rounds, round);
            assert_eq!(h.failing.len(), 1, "{h:?}");
            assert_eq!(h.failing[0].path, path);
            assert_eq!(h.failing[0].since, start);
            assert!(h.failing[0].error.contains("rename"), "{h:?}");
            assert_eq!(h.last_success, None);
            let due = clock.next_deadline().await;
            assert_eq!(Some(due), h.next_retry);
            waits.push((due - clock.now()).num_seconds());
            if round < 3 {
                clock.set(due);
            }
        }
        assert_eq!(waits, [1, 2, 4]);

        // Reported where readiness, metrics and status look.
        let failing = delivery.failing_sinks();
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert!(
            failing[0].starts_with(&format!(
                "1234567890/backend: the sink {} is failing since",
                path.display()
            )),
            "{failing:?}"
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"linetokd_sink_failures_total{channel="1234567890",channel_name="",group="backend"} 3"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("linetokd_sink_last_success_timestamp_seconds{"),
            "{text}"
        );
        let note = store
            .note(&sink_note_key(&channel(), &group()))
            .unwrap()
            .unwrap();
        assert!(
            note.value.starts_with("failing since 2026-03-01T00:00:00Z (3 attempts; next retry at 2026-03-01T00:00:07Z): "),
            "{}",
            note.value
        );
        assert!(note.value.contains(&path.display().to_string()));
        for shown in [&note.value, &failing[0], &text] {
            assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
        }

        // The path is fixed: the next retry writes it, without a rotation.
        std::fs::remove_dir(&path).unwrap();
        let due = clock.next_deadline().await;
        clock.set(due);
        let h = health_until(&mut health, |h| h.rounds == 4).await;
        assert!(h.failing.is_empty(), "{h:?}");
        assert_eq!(h.failed_rounds, 0);
        assert_eq!(h.next_retry, None);
        assert_eq!(h.last_success, Some(due));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["access_token"], TOKEN);
        assert!(delivery.failing_sinks().is_empty());
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                r#"linetokd_sink_last_success_timestamp_seconds{{channel="1234567890",channel_name="",group="backend"}} {}"#,
                due.timestamp()
            )),
            "{text}"
        );
        let note = store
            .note(&sink_note_key(&channel(), &group()))
            .unwrap()
            .unwrap();
        assert_eq!(note.value, "ok: every sink written");
        assert_eq!(note.at, due);
        // No retry is left sleeping once everything is written.
        assert_eq!(clock.sleepers(), 0);

        shutdown.cancel();
        tokio::time::timeout(StdDuration::from_secs(30), running)
            .await
            .expect("the delivery service stops")
            .unwrap();
    }

    // -----------------------------------------------------------------------
    // The `sink_failing` and `hook_failing` alerts delivery raises and
    // resolves. Each round's alerts are stated before its health is
    // published, so once `health_until` sees a round, the store shows its
    // alerts.

    /// A token LINE's verify refused, or one an incident condemned, is
    /// still live in the store but never handed out: loading the book at a
    /// start or reload leaves it out of the sinks (found while fixing the
    /// condemned token: the load handed it out as the previous token).
    #[tokio::test]
    async fn a_refused_token_is_never_loaded_into_the_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        store
            .sync_config(
                clock.now(),
                &[linetokd::store::ChannelSpec {
                    id: channel(),
                    name: "chan".into(),
                    groups: vec![group()],
                    fingerprint: None,
                    short_lived: Vec::new(),
                }],
            )
            .unwrap();
        let t0 = clock.now();
        for (i, (key, value)) in [("leaked", "eyJ.leaked-token.sig"), ("fresh", TOKEN)]
            .into_iter()
            .enumerate()
        {
            let at = t0 + Duration::seconds(i64::try_from(i).unwrap());
            let intent = store.begin_issue(at, &channel(), &group()).unwrap();
            let token = linetokd::store::IssuedToken {
                key_id: KeyId::new(key),
                value: AccessToken::new(value),
                issued_at: at,
                expires_at: at + Duration::days(30),
                verified_at: Some(at),
            };
            store.complete_issue(at, intent, &token, &[]).unwrap();
        }
        store
            .mark_refused(t0 + Duration::seconds(2), &KeyId::new("leaked"), "leaked")
            .unwrap();
        clock.set(t0 + Duration::seconds(3));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let path = out.join("backend.json");
        let running = Running::start(
            &store,
            &clock,
            GroupDelivery {
                sinks: vec![json_sink(&path)],
                hook: None,
            },
            HookRetry::default(),
        )
        .await;
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains(TOKEN), "{written}");
        assert!(!written.contains("leaked"), "{written}");
        running.stop().await;
    }

    /// A json sink at `path`, mode 0600.
    fn json_sink(path: &Path) -> SinkSpec {
        SinkSpec {
            path: path.to_owned(),
            format: SinkFormat::Json,
            mode: 0o600,
            owner: None,
            group: None,
        }
    }

    /// A sink path the rename cannot replace (a directory is there), even
    /// for root.
    fn broken_sink(dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::create_dir(&path).unwrap();
        path
    }

    /// A delivery service for the one group of `delivery`, running on
    /// `clock`, with its event sender and the handle of its task.
    struct Running {
        delivery: Arc<Delivery>,
        events: broadcast::Sender<RotationEvent>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        async fn start(
            store: &Store,
            clock: &linetokd::clock::ManualClock,
            delivery: GroupDelivery,
            hook_retry: HookRetry,
        ) -> Self {
            let shared: SharedClock = Arc::new(clock.clone());
            let delivery = Delivery::new(
                TokenBook::new(),
                store.clone(),
                shared,
                Metrics::shared(),
                HashMap::from([((channel(), group()), delivery)]),
                hook_retry,
            );
            delivery.load().await.unwrap();
            let (events, receiver) = broadcast::channel(16);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(Arc::clone(&delivery).run(receiver, shutdown.clone()));
            Self {
                delivery,
                events,
                shutdown,
                task,
            }
        }

        fn issue(&self, key_id: &str, at: chrono::DateTime<chrono::Utc>) {
            self.events
                .send(RotationEvent::Issued {
                    channel: channel(),
                    group: group(),
                    key_id: KeyId::new(key_id),
                    token: AccessToken::new(TOKEN),
                    issued_at: at,
                    expires_at: at + Duration::days(30),
                    reason: IssueReason::NoCurrent,
                    verified: true,
                    condemned: Vec::new(),
                })
                .unwrap();
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(StdDuration::from_secs(30), self.task)
                .await
                .expect("the delivery service stops")
                .unwrap();
        }
    }

    /// An incident whose revoke LINE refused condemns the leaked token with
    /// the fresh token's issue: delivery drops it in the same update that
    /// publishes the fresh one, so no sink write and no token API answer
    /// ever has it as the previous token (found by review: it was handed
    /// out as the previous token until the `Gone` that followed).
    #[tokio::test]
    async fn a_token_the_issue_condemned_is_never_the_previous_token() {
        let dir = tempfile::tempdir().unwrap();
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let path = dir.path().join("backend.json");
        let running = Running::start(
            &store,
            &clock,
            GroupDelivery {
                sinks: vec![json_sink(&path)],
                hook: None,
            },
            HookRetry::default(),
        )
        .await;
        let mut health = running.delivery.sink_health();
        let send = |key: &str, value: &str, condemned: Vec<KeyId>| {
            let at = clock.now();
            running
                .events
                .send(RotationEvent::Issued {
                    channel: channel(),
                    group: group(),
                    key_id: KeyId::new(key),
                    token: AccessToken::new(value),
                    issued_at: at,
                    expires_at: at + Duration::days(30),
                    reason: IssueReason::Incident,
                    verified: true,
                    condemned,
                })
                .unwrap();
        };
        send("leaked", "eyJ.leaked-token.sig", Vec::new());
        next_round(&mut health, 1).await;
        assert!(std::fs::read_to_string(&path).unwrap().contains("leaked"));
        clock.set(clock.now() + Duration::seconds(1));
        send("fresh", TOKEN, vec![KeyId::new("leaked")]);
        next_round(&mut health, 2).await;
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains(TOKEN), "{written}");
        assert!(!written.contains("leaked"), "{written}");
        running.stop().await;
    }

    /// Waits for the group's write round `round` to be done.
    async fn next_round(health: &mut watch::Receiver<SinkBoard>, round: u64) -> SinkHealth {
        health_until(health, |h| h.rounds == round).await
    }

    /// The firing `sink_failing` alerts, by the sink path they name.
    fn sink_alerts(store: &Store) -> Vec<AlertRecord> {
        let mut firing: Vec<AlertRecord> = store
            .firing_alerts()
            .unwrap()
            .into_iter()
            .filter(|a| a.alertname == "sink_failing")
            .collect();
        firing.sort_by(|a, b| a.label.cmp(&b.label));
        firing
    }

    fn sink_label(path: &Path) -> Option<(String, String)> {
        Some(("sink".to_owned(), path.display().to_string()))
    }

    #[tokio::test]
    async fn five_failed_rounds_in_a_row_raise_sink_failing_per_sink_until_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let bad1 = broken_sink(dir.path(), "one.json");
        let bad2 = broken_sink(dir.path(), "two.json");
        let good = dir.path().join("good.json");
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let sinks = vec![json_sink(&bad1), json_sink(&bad2), json_sink(&good)];
        let running = Running::start(
            &store,
            &clock,
            GroupDelivery {
                sinks: sinks.clone(),
                hook: None,
            },
            HookRetry::default(),
        )
        .await;
        let mut health = running.delivery.sink_health();
        running.issue("kid-1", clock.now());

        // Four failed rounds are hiccups: nothing fires.
        for round in 1..=4 {
            let h = next_round(&mut health, round).await;
            assert_eq!(h.failing.len(), 2, "{h:?}");
            assert!(
                store.firing_alerts().unwrap().is_empty(),
                "round {round}: {:?}",
                store.firing_alerts().unwrap()
            );
            clock.set(h.next_retry.unwrap());
        }

        // The fifth: one warning per failing sink, none for the good one.
        let fifth = clock.now();
        let h = next_round(&mut health, 5).await;
        assert_eq!(h.failed_rounds, 5);
        let firing = sink_alerts(&store);
        assert_eq!(firing.len(), 2, "{firing:#?}");
        assert_eq!(firing.len(), store.firing_alerts().unwrap().len());
        for (alert, path) in firing.iter().zip([&bad1, &bad2]) {
            assert_eq!(alert.channel_id, Some(channel()));
            assert_eq!(alert.group, Some(group()));
            assert_eq!(alert.label, sink_label(path));
            assert_eq!(alert.severity, "warning");
            assert_eq!(alert.started_at, fifth);
            assert_eq!(alert.resolved_at, None);
            assert!(
                alert.summary.starts_with(&format!(
                    "writing the sink {} failed 5 times in a row: ",
                    path.display()
                )),
                "{}",
                alert.summary
            );
            assert!(!alert.summary.contains(TOKEN), "{}", alert.summary);
        }

        // A sixth failed round raises nothing new: the same two alerts, the
        // same start, the count brought up to date.
        clock.set(h.next_retry.unwrap());
        let h = next_round(&mut health, 6).await;
        let firing = sink_alerts(&store);
        assert_eq!(firing.len(), 2, "{firing:#?}");
        assert!(firing.iter().all(|a| a.started_at == fifth), "{firing:#?}");
        assert!(
            firing[0].summary.contains("failed 6 times in a row"),
            "{}",
            firing[0].summary
        );

        // One sink fixed: its alert resolves at the next round, the other's
        // fires on.
        std::fs::remove_dir(&bad1).unwrap();
        clock.set(h.next_retry.unwrap());
        let h = next_round(&mut health, 7).await;
        assert_eq!(h.failing.len(), 1, "{h:?}");
        let firing = sink_alerts(&store);
        assert_eq!(firing.len(), 1, "{firing:#?}");
        assert_eq!(firing[0].label, sink_label(&bad2));
        assert_eq!(firing[0].started_at, fifth);

        // A reload adds a third sink that fails too: the group has failed 8
        // rounds in a row, but the new sink only once, which is no alert.
        let bad3 = broken_sink(dir.path(), "three.json");
        let mut with_third = sinks.clone();
        with_third.push(json_sink(&bad3));
        running.delivery.set_groups(HashMap::from([(
            (channel(), group()),
            GroupDelivery {
                sinks: with_third,
                hook: None,
            },
        )]));
        let h = next_round(&mut health, 8).await;
        assert_eq!(h.failed_rounds, 8);
        assert_eq!(h.failing.len(), 2, "{h:?}");
        let firing = sink_alerts(&store);
        assert_eq!(firing.len(), 1, "{firing:#?}");
        assert_eq!(firing[0].label, sink_label(&bad2));

        // Both fixed: the next retry writes every sink and nothing fires.
        std::fs::remove_dir(&bad2).unwrap();
        std::fs::remove_dir(&bad3).unwrap();
        clock.set(h.next_retry.unwrap());
        let h = next_round(&mut health, 9).await;
        assert!(h.failing.is_empty(), "{h:?}");
        assert!(store.firing_alerts().unwrap().is_empty());
        for path in [&bad1, &bad2, &bad3, &good] {
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            assert_eq!(doc["key_id"], "kid-1", "{}", path.display());
        }
        // Every edge is in the event log once: two raised, two resolved.
        let events = store.events_of_channel(&channel(), 100).unwrap();
        let count = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count();
        assert_eq!(count(EventKind::AlertRaised), 2, "{events:#?}");
        assert_eq!(count(EventKind::AlertResolved), 2, "{events:#?}");
        running.stop().await;
    }

    /// A restart starts every sink's count again; a sink still failing
    /// keeps its alert (same start, no resolve and new page), and only a
    /// write that succeeds resolves it.
    #[tokio::test]
    async fn a_restart_with_the_sink_still_failing_keeps_its_alert_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let bad = broken_sink(dir.path(), "one.json");
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let delivery = || GroupDelivery {
            sinks: vec![json_sink(&bad)],
            hook: None,
        };
        let running = Running::start(&store, &clock, delivery(), HookRetry::default()).await;
        let mut health = running.delivery.sink_health();
        running.issue("kid-1", clock.now());
        for round in 1..=5 {
            let h = next_round(&mut health, round).await;
            if round < 5 {
                clock.set(h.next_retry.unwrap());
            }
        }
        let before = sink_alerts(&store);
        assert_eq!(before.len(), 1, "{before:#?}");
        running.stop().await;

        // The restart: its first round fails (count 1 of 5).
        let running = Running::start(&store, &clock, delivery(), HookRetry::default()).await;
        let mut health = running.delivery.sink_health();
        running.issue("kid-1", clock.now());
        let h = next_round(&mut health, 1).await;
        assert_eq!(h.failed_rounds, 1);
        let after = sink_alerts(&store);
        assert_eq!(after.len(), 1, "{after:#?}");
        assert_eq!(after[0].started_at, before[0].started_at);
        let events = store.events_of_channel(&channel(), 100).unwrap();
        let resolved = events
            .iter()
            .filter(|e| e.kind == EventKind::AlertResolved)
            .count();
        assert_eq!(resolved, 0, "{events:#?}");

        // Fixed: the next retry writes it and the alert resolves.
        std::fs::remove_dir(&bad).unwrap();
        clock.set(h.next_retry.unwrap());
        let h = next_round(&mut health, 2).await;
        assert!(h.failing.is_empty(), "{h:?}");
        assert!(sink_alerts(&store).is_empty());
        running.stop().await;
    }

    /// Alerts the config no longer backs resolve when the config changes
    /// (or at start): a failing sink's path dropped while the group keeps
    /// another sink, a failing hook removed from the group.
    #[tokio::test]
    async fn a_sink_path_or_hook_dropped_from_the_config_resolves_its_alert_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let bad = broken_sink(dir.path(), "one.json");
        let good = dir.path().join("good.json");
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let (ch, g) = (channel(), group());
        let state = |name: &'static str, label: Option<AlertLabel>| {
            let scope = AlertScope {
                channel: Some(&ch),
                group: Some(&g),
                names: &[name],
            };
            let spec = AlertSpec {
                group: Some(g.clone()),
                label,
                alertname: name,
                severity: "warning",
                summary: format!("{name} before the restart"),
            };
            store.sync_alerts(clock.now(), scope, &[spec]).unwrap();
        };
        // Left by an earlier run: the failing sink and a failing hook.
        state(
            "sink_failing",
            Some(AlertLabel {
                name: "sink",
                value: bad.display().to_string(),
            }),
        );
        state("hook_failing", None);
        // This run's config keeps only the good sink and no hook.
        let running = Running::start(
            &store,
            &clock,
            GroupDelivery {
                sinks: vec![json_sink(&good)],
                hook: None,
            },
            HookRetry::default(),
        )
        .await;
        assert!(
            store.firing_alerts().unwrap().is_empty(),
            "{:#?}",
            store.firing_alerts()
        );
        running.stop().await;
    }

    #[tokio::test]
    async fn a_failing_sink_dropped_from_the_config_resolves_its_alert() {
        let dir = tempfile::tempdir().unwrap();
        let bad = broken_sink(dir.path(), "one.json");
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let running = Running::start(
            &store,
            &clock,
            GroupDelivery {
                sinks: vec![json_sink(&bad)],
                hook: None,
            },
            HookRetry::default(),
        )
        .await;
        let mut health = running.delivery.sink_health();
        running.issue("kid-1", clock.now());
        for round in 1..=4 {
            let h = next_round(&mut health, round).await;
            clock.set(h.next_retry.unwrap());
        }
        next_round(&mut health, 5).await;
        assert_eq!(sink_alerts(&store).len(), 1);

        // The group stays, without sinks: at its next retry there is
        // nothing left to write, and nothing left failing.
        running.delivery.set_groups(HashMap::from([(
            (channel(), group()),
            GroupDelivery::default(),
        )]));
        let due = clock.next_deadline().await;
        clock.set(due);
        let key = (channel(), group());
        tokio::time::timeout(
            StdDuration::from_secs(30),
            health.wait_for(|b| !b.contains_key(&key)),
        )
        .await
        .expect("the group's sink state was not dropped within 30 s")
        .unwrap();
        assert!(
            store.firing_alerts().unwrap().is_empty(),
            "{:#?}",
            store.firing_alerts().unwrap()
        );
        assert_eq!(clock.sleepers(), 0, "no retry is left");
        running.stop().await;
    }

    #[tokio::test]
    async fn a_removed_group_retired_with_its_last_token_resolves_its_sink_and_hook_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let bad = broken_sink(dir.path(), "one.json");
        let clock = support::manual_clock();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let hook = HookSpec {
            argv: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "echo backend down >&2; exit 3".to_owned(),
            ],
            timeout: StdDuration::from_secs(30),
            env: inherited_env(std::env::vars_os()),
        };
        let running = Running::start(
            &store,
            &clock,
            GroupDelivery {
                sinks: vec![json_sink(&bad)],
                hook: Some(hook),
            },
            HookRetry {
                attempts: 1,
                base: StdDuration::from_secs(1),
                cap: StdDuration::from_secs(1),
            },
        )
        .await;
        let mut health = running.delivery.sink_health();
        running.issue("kid-1", clock.now());
        let firing = support::firing_until(&store, Some(&clock), |f| f.len() == 2).await;
        let mut names: Vec<&str> = firing.iter().map(|a| a.alertname.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["hook_failing", "sink_failing"], "{firing:#?}");
        assert!(firing.iter().all(|a| a.group == Some(group())));

        // Another group's alert of the same name is not the retired
        // group's to resolve.
        let other = GroupName::new("other");
        store
            .sync_alerts(
                clock.now(),
                AlertScope {
                    channel: Some(&channel()),
                    group: Some(&other),
                    names: &["sink_failing"],
                },
                &[AlertSpec {
                    group: Some(other.clone()),
                    label: None,
                    alertname: "sink_failing",
                    severity: "warning",
                    summary: "another group's sink".to_owned(),
                }],
            )
            .unwrap();

        // The group leaves the config; its sinks stay until its token goes.
        running.delivery.set_groups(HashMap::new());
        assert!(bad.is_dir());
        running
            .events
            .send(RotationEvent::Revoked {
                channel: channel(),
                group: group(),
                key_id: KeyId::new("kid-1"),
                reason: RevokeReason::Removed,
            })
            .unwrap();
        let left = support::firing_until(&store, None, |f| {
            f.iter().all(|a| a.group.as_ref() != Some(&group()))
        })
        .await;
        assert_eq!(left.len(), 1, "{left:#?}");
        assert_eq!(left[0].group.as_ref(), Some(&other));
        let key = (channel(), group());
        tokio::time::timeout(
            StdDuration::from_secs(30),
            health.wait_for(|b| !b.contains_key(&key)),
        )
        .await
        .expect("the retired group's sink state was not dropped within 30 s")
        .unwrap();
        running.stop().await;
    }
}
