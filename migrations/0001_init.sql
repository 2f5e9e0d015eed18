-- linetokd schema, version 1.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 1`. Never edit a released migration: add
-- 0002_<verb_object>.sql instead.
--
-- Conventions:
-- * Every time is INTEGER unix seconds, UTC. LINE counts token lifetimes in
--   whole seconds, SQL can compare and index integers directly, and there is
--   no time zone or text format to get wrong.
-- * Rows of channels and groups are never deleted: a channel or group that
--   leaves the config gets `removed_at`, so its tokens keep a parent and can
--   still be revoked after `removal_grace`.
-- * Only `tokens.access_token` ever holds a token value. Free-text columns
--   (`events.detail`, `issue_intents.error`, `groups.last_error`,
--   `tokens.state_reason`) are screened against stored token values by the
--   store before they are written.

-- Channels, synced from the config at start and on reload.
CREATE TABLE channels (
    id                TEXT    NOT NULL PRIMARY KEY,
    name              TEXT    NOT NULL,
    added_at          INTEGER NOT NULL,
    -- NULL while the channel is in the config.
    removed_at        INTEGER,
    -- When LINE's list of valid key IDs was last fetched and applied.
    last_reconcile_at INTEGER
) STRICT;

-- Consumer groups of a channel, synced from the config, with the
-- scheduler's runtime state for the group.
CREATE TABLE groups (
    channel_id           TEXT    NOT NULL REFERENCES channels (id),
    name                 TEXT    NOT NULL,
    added_at             INTEGER NOT NULL,
    -- NULL while the group is in the config.
    removed_at           INTEGER,
    -- The last failure of an issue/verify/revoke step for this group.
    last_error           TEXT,
    last_error_at        INTEGER,
    -- Failures since the last success; drives the backoff.
    consecutive_failures INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    -- Backoff: no new attempt before this time.
    retry_not_before     INTEGER,
    PRIMARY KEY (channel_id, name)
) STRICT;

-- The issuance-intent journal (docs/design.md section 5.7, "The crash journal"): a row
-- is written before LINE is asked for a token and closed in the same
-- transaction that stores the token. An intent still 'open' after a crash
-- may stand for a token LINE issued that we never stored.
CREATE TABLE issue_intents (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    channel_id  TEXT    NOT NULL,
    group_name  TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT    NOT NULL DEFAULT 'open'
                CHECK (outcome IN ('open', 'issued', 'failed', 'lost')),
    -- Set when outcome = 'issued'.
    key_id      TEXT,
    -- Set when outcome = 'failed' or 'lost'.
    error       TEXT,
    FOREIGN KEY (channel_id, group_name) REFERENCES groups (channel_id, name),
    CHECK ((outcome = 'open') = (finished_at IS NULL)),
    CHECK ((outcome = 'issued') = (key_id IS NOT NULL))
) STRICT;

-- max_issues_per_hour counts intents started per channel since a time.
CREATE INDEX issue_intents_by_channel_started ON issue_intents (channel_id, started_at);
CREATE INDEX issue_intents_open ON issue_intents (outcome) WHERE outcome = 'open';

-- Tokens linetokd issued. The value has to be kept: it is published to the
-- sinks and the token API, and LINE's revoke endpoint takes the token itself.
CREATE TABLE tokens (
    key_id           TEXT    NOT NULL PRIMARY KEY,
    channel_id       TEXT    NOT NULL,
    group_name       TEXT    NOT NULL,
    access_token     TEXT    NOT NULL CHECK (length(access_token) > 0),
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'live'
                     CHECK (state IN ('live', 'revoked', 'expired', 'gone')),
    state_reason     TEXT,
    state_changed_at INTEGER NOT NULL,
    last_verified_at INTEGER,
    intent_id        INTEGER REFERENCES issue_intents (id),
    FOREIGN KEY (channel_id, group_name) REFERENCES groups (channel_id, name)
) STRICT;

CREATE INDEX tokens_by_group ON tokens (channel_id, group_name, issued_at);
CREATE INDEX tokens_live_by_channel ON tokens (channel_id, expires_at) WHERE state = 'live';

-- Key IDs LINE lists as valid on a channel that are not ours.
CREATE TABLE foreign_kids (
    channel_id    TEXT    NOT NULL REFERENCES channels (id),
    key_id        TEXT    NOT NULL,
    first_seen_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    -- Set when a reconcile no longer finds it (expired or revoked by its owner).
    gone_at       INTEGER,
    PRIMARY KEY (channel_id, key_id)
) STRICT;

-- The event history. Never holds a token value. Deliberately without foreign
-- keys: history must be recordable whatever happened to the rows it names.
CREATE TABLE events (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    channel_id TEXT    NOT NULL,
    group_name TEXT,
    key_id     TEXT,
    kind       TEXT    NOT NULL,
    detail     TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX events_by_channel ON events (channel_id, id);
