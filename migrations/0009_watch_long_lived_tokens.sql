-- linetokd schema, version 9: long-lived channel access tokens, watched, and
-- `info` alerts.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 9`. Only new tables: every earlier row is kept.
--
-- A long-lived token is issued in LINE's console and lives in the
-- operator's `token_file`; linetokd only verifies it. Its value is never
-- stored: a row is known by the value's fingerprint (`sha256:` and the
-- first 8 hex digits of its SHA-256), which is what `linetokd status`
-- shows. `role` is `current` (the value the file holds), `old` (a value
-- the file held before, kept in the daemon's memory and verified until
-- LINE rejects it), `ended` (an old value LINE rejected, or one the daemon
-- forgot when it restarted: its value lived only in memory).
-- `result` is the last verify's answer: `pending` (not verified yet),
-- `valid`, `invalid` (LINE's 400), `wrong_channel` (valid, but LINE says it
-- belongs to another channel), `unknown` (three verifies in a row failed
-- transiently). `retired_at` is set by `linetokd long-lived retire`: the
-- daemon neither verifies nor alerts about a retired token again.

CREATE TABLE long_lived_tokens (
    channel_id      TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL CHECK (length(fingerprint) > 0),
    role            TEXT    NOT NULL CHECK (role IN ('current', 'old', 'ended')),
    first_seen_at   INTEGER NOT NULL,
    last_valid_at   INTEGER,
    last_checked_at INTEGER,
    result          TEXT    NOT NULL
                    CHECK (result IN ('pending', 'valid', 'invalid', 'wrong_channel', 'unknown')),
    detail          TEXT    NOT NULL DEFAULT '',
    retired_at      INTEGER,
    PRIMARY KEY (channel_id, fingerprint)
) STRICT;

-- `long_lived_old_still_valid` is an `info` alert: listed by `status`,
-- counted by `linetokd_alerts_firing`, never sent (every receiver's
-- `min_severity` is at least `warning`). SQLite cannot change a CHECK in
-- place, so the alerts table is rebuilt with every row kept.

CREATE TABLE alerts_v8 (
    fingerprint  TEXT    NOT NULL PRIMARY KEY,
    -- NULL for an alert about the daemon as a whole.
    channel_id   TEXT,
    -- NULL for a channel-wide (or daemon-wide) alert.
    group_name   TEXT,
    -- The extra label's name and value (`key_id`, `sink`, `fingerprint`, ...).
    label_name   TEXT,
    label_value  TEXT,
    alertname    TEXT    NOT NULL,
    severity     TEXT    NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    summary      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    resolved_at  INTEGER,
    CHECK ((label_name IS NULL) = (label_value IS NULL)),
    CHECK (channel_id IS NOT NULL OR group_name IS NULL)
) STRICT;

INSERT INTO alerts_v8 (fingerprint, channel_id, group_name, label_name, label_value, alertname,
                       severity, summary, started_at, last_seen_at, resolved_at)
    SELECT fingerprint, channel_id, group_name, label_name, label_value, alertname,
           severity, summary, started_at, last_seen_at, resolved_at
    FROM alerts;

DROP TABLE alerts;
ALTER TABLE alerts_v8 RENAME TO alerts;

CREATE INDEX alerts_by_channel ON alerts (channel_id) WHERE resolved_at IS NULL;
CREATE INDEX alerts_by_resolved_at ON alerts (resolved_at) WHERE resolved_at IS NOT NULL;
