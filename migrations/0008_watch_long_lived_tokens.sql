-- linetokd schema, version 8: long-lived channel access tokens, watched.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 8`. Only new tables: every earlier row is kept.
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
