-- Alerts about the daemon as a whole (a rejected config reload, clock
-- skew, a `line` receiver out of quota) have no channel, and some alerts
-- carry one more label that tells two of them apart: the key ID of a
-- foreign token, the path of a failing sink, the name of a failing hook.
-- SQLite cannot drop a NOT NULL constraint in place, so the table is
-- rebuilt with every row kept (a channel-wide or group alert keeps its
-- fingerprint and gets no extra label).

CREATE TABLE alerts_v6 (
    fingerprint  TEXT    NOT NULL PRIMARY KEY,
    -- NULL for an alert about the daemon as a whole.
    channel_id   TEXT,
    -- NULL for a channel-wide (or daemon-wide) alert.
    group_name   TEXT,
    -- The extra label's name and value (`key_id`, `sink`, `hook`, ...).
    label_name   TEXT,
    label_value  TEXT,
    alertname    TEXT    NOT NULL,
    severity     TEXT    NOT NULL CHECK (severity IN ('warning', 'critical')),
    summary      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    resolved_at  INTEGER,
    CHECK ((label_name IS NULL) = (label_value IS NULL)),
    CHECK (channel_id IS NOT NULL OR group_name IS NULL)
) STRICT;

INSERT INTO alerts_v6 (fingerprint, channel_id, group_name, alertname, severity, summary,
                       started_at, last_seen_at, resolved_at)
    SELECT fingerprint, channel_id, group_name, alertname, severity, summary,
           started_at, last_seen_at, resolved_at
    FROM alerts;

DROP TABLE alerts;
ALTER TABLE alerts_v6 RENAME TO alerts;

CREATE INDEX alerts_by_channel ON alerts (channel_id) WHERE resolved_at IS NULL;
CREATE INDEX alerts_by_resolved_at ON alerts (resolved_at) WHERE resolved_at IS NOT NULL;
