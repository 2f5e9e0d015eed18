-- linetokd schema, version 11: high availability's lease and orphan
-- tables, and the epoch and assertion expiry of an issue intent
-- (docs/design.md section 14).
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 11`; its PostgreSQL twin is
-- migrations/postgres/0011_ha_leases_and_orphans.sql (the same tables,
-- columns, CHECKs and indexes). Only new tables and new nullable columns:
-- every earlier row is kept. A single instance on SQLite leaves them empty
-- (NULL): the tables matter where several instances share one PostgreSQL
-- database, but both backends keep one schema per version.
--
-- Times are unix milliseconds. In these tables they are the DATABASE's
-- (PostgreSQL's `clock_timestamp()`), never a host's: no host clock is
-- compared with another.

-- One row per channel that was ever led: who may write for it and call
-- LINE for it (`holder`, an instance ID), the fencing token (`epoch`,
-- raised by one on every grant) and the instant the grant ends
-- (`valid_until`, exclusive). Rows are never deleted: a released or
-- expired grant keeps its epoch, so the next grant raises it.
-- No foreign key to `channels`: a lease may be granted before its holder
-- has synced the channel's row (that sync is itself a fenced write).
CREATE TABLE channel_leases (
    channel_id  TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL CHECK (length(holder) > 0),
    epoch       INTEGER NOT NULL CHECK (epoch > 0),
    valid_until INTEGER NOT NULL
) STRICT;

-- Tokens LINE issued to a leader whose store of them failed the fence
-- (section 14.3): never published, recorded here by key ID (NEVER the
-- value), revoked at LINE when the channel secret is configured. The
-- record is written without the fence, by the instance that lost its
-- grant, so it has no foreign keys either: nothing may refuse it.
-- `key_id` is unique, so recording an orphan twice (a retry after an
-- unknown commit outcome) keeps one row.
--
-- `revoke_outcome`: NULL until the revoke was tried; `revoked` (LINE
-- revoked it, at `revoked_at`); `failed` (the last try failed,
-- `revoke_detail` says why; it may be tried again); `no_secret` (the
-- channel secret is not configured: it lives until `expires_at` and is
-- alerted as a lost token).
CREATE TABLE fenced_orphans (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    channel_id     TEXT    NOT NULL,
    group_name     TEXT    NOT NULL,
    key_id         TEXT    NOT NULL CHECK (length(key_id) > 0),
    epoch          INTEGER NOT NULL CHECK (epoch > 0),
    intent_id      INTEGER NOT NULL,
    recorded_by    TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoke_outcome TEXT    CHECK (revoke_outcome IN ('revoked', 'failed', 'no_secret')),
    revoke_detail  TEXT,
    CHECK ((revoke_outcome IS NOT NULL AND revoke_outcome = 'revoked') = (revoked_at IS NOT NULL))
) STRICT;

CREATE UNIQUE INDEX fenced_orphans_by_key_id ON fenced_orphans (key_id);
CREATE INDEX fenced_orphans_by_channel ON fenced_orphans (channel_id, recorded_at);

-- The lease epoch an intent was committed under (a fenced write) and the
-- `exp` of the assertion its request carries (signed before the intent,
-- never re-signed for it). A new leader counts an older epoch's open
-- intent as possibly issued until a key-ID listing that began after
-- `assertion_exp` plus LINE's clock allowance (section 14.3). NULL for
-- intents written without HA.
ALTER TABLE issue_intents ADD COLUMN epoch INTEGER CHECK (epoch IS NULL OR epoch > 0);
ALTER TABLE issue_intents ADD COLUMN assertion_exp INTEGER;
