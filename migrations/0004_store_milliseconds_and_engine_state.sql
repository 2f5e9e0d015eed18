-- linetokd schema, version 4: every instant in milliseconds, and every fact
-- the rotation engine decides on kept in the store.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 4`, so an existing database is converted in place
-- completely or not at all.
--
-- Why milliseconds: LINE's expiries are instants. Whole seconds (floored)
-- made the daemon act in the second a token expired as if LINE had already
-- freed its slot, and made three rotations in one second indistinguishable.
-- Every time column from version 1 to 3 is multiplied by 1000 here; every
-- new column is milliseconds from the start.
--
-- Why the new state: a restart at any instant must continue what was
-- requested and backed off, and `status`/`plan` must show it. Memory holds
-- no state a restart would lose.

UPDATE channels SET added_at = added_at * 1000,
                    removed_at = removed_at * 1000,
                    last_reconcile_at = last_reconcile_at * 1000;
UPDATE groups SET added_at = added_at * 1000,
                  removed_at = removed_at * 1000,
                  last_error_at = last_error_at * 1000,
                  retry_not_before = retry_not_before * 1000;
UPDATE issue_intents SET started_at = started_at * 1000,
                         finished_at = finished_at * 1000;
UPDATE tokens SET issued_at = issued_at * 1000,
                  expires_at = expires_at * 1000,
                  state_changed_at = state_changed_at * 1000,
                  last_verified_at = last_verified_at * 1000;
UPDATE foreign_kids SET first_seen_at = first_seen_at * 1000,
                        last_seen_at = last_seen_at * 1000,
                        gone_at = gone_at * 1000;
UPDATE events SET at = at * 1000;
UPDATE daemon_notes SET at = at * 1000;

-- A group's failure streak says what failed and how, so a restart resumes
-- the same backoff (a permanent failure is not re-read as transient).
ALTER TABLE groups ADD COLUMN failure_kind TEXT
    CHECK (failure_kind IN ('transient', 'rate_limited', 'permanent', 'channel_full', 'maybe_issued'));
-- The step that failed: 'issue', 'verify' or 'revoke'. The streak ends when
-- that step (or any issue) succeeds, never because another step did.
ALTER TABLE groups ADD COLUMN failed_step TEXT;

-- Per channel: the config the channel was last synced with (a digest of the
-- channel ID, key ID, signing key and secret). A permanent failure's hold is
-- cleared when it changes, also across a restart.
ALTER TABLE channels ADD COLUMN config_fingerprint TEXT;
-- The key-ID listing backs off per channel, not per group.
ALTER TABLE channels ADD COLUMN reconcile_failures INTEGER NOT NULL DEFAULT 0
    CHECK (reconcile_failures >= 0);
ALTER TABLE channels ADD COLUMN reconcile_retry_not_before INTEGER;
ALTER TABLE channels ADD COLUMN reconcile_error TEXT;
-- LINE refused an issue because the channel holds 30 live tokens: from
-- full_since the channel counts as full until full_until (the next expiry
-- LINE will honour, plus a margin), and the next issue needs a reconcile
-- that settles full_intent (the refused attempt): order by intent ID, never
-- by timestamps, which tie on a clock that does not move between steps.
ALTER TABLE channels ADD COLUMN full_since INTEGER;
ALTER TABLE channels ADD COLUMN full_until INTEGER;
ALTER TABLE channels ADD COLUMN full_intent INTEGER;
-- Issue attempts with an unknown outcome (lost in a crash, or answered in a
-- way that leaves open whether LINE issued) count against capacity until a
-- reconcile started after them. The reconcile records the newest intent ID
-- it settles, so order is never judged by timestamps.
ALTER TABLE channels ADD COLUMN settled_through_intent INTEGER NOT NULL DEFAULT 0;
UPDATE channels SET settled_through_intent = coalesce(
    (SELECT max(i.id) FROM issue_intents i
      WHERE i.channel_id = channels.id AND i.outcome <> 'open'
        AND channels.last_reconcile_at IS NOT NULL
        AND i.finished_at <= channels.last_reconcile_at), 0);

-- 1 when the attempt may have produced a token LINE counts (timeout after
-- sending, a 200 that broke the contract, a crash). Version 3 did not know;
-- its failed and lost attempts are read as "may have issued", which errs on
-- the side of a fuller channel until the next reconcile.
ALTER TABLE issue_intents ADD COLUMN maybe_issued INTEGER NOT NULL DEFAULT 0
    CHECK (maybe_issued IN (0, 1));
UPDATE issue_intents SET maybe_issued = 1 WHERE outcome IN ('failed', 'lost');

-- When LINE's verify refused a token that may still be live at LINE (its
-- key-ID list may still list it): never handed out again, still counted
-- against capacity, revoked when the secret is configured, and marked gone
-- once a reconcile no longer lists it.
ALTER TABLE tokens ADD COLUMN refused_at INTEGER;

-- The store screens free text for token values before writing it; the
-- shortest stored token's length tells, from an index, whether a text can
-- hold one at all, so the common case never scans every token.
CREATE INDEX tokens_by_value_length ON tokens (length(access_token));

-- Operator requests (`linetokd rotate`, `linetokd revoke`), open until the
-- engine carries them out; a request accepted just before a crash is carried
-- out after the restart.
CREATE TABLE requests (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    channel_id   TEXT    NOT NULL,
    group_name   TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('rotate', 'incident')),
    requested_at INTEGER NOT NULL,
    -- Who asked: the control socket's peer (uid and pid) or 'linetokd' for
    -- the engine's own requests (a token verify refused).
    requested_by TEXT    NOT NULL,
    done_at      INTEGER,
    -- How it ended: 'done' (carried out) or 'dropped' (its group left the config).
    outcome      TEXT CHECK (outcome IN ('done', 'dropped')),
    FOREIGN KEY (channel_id, group_name) REFERENCES groups (channel_id, name),
    CHECK ((done_at IS NULL) = (outcome IS NULL))
) STRICT;
CREATE INDEX requests_open ON requests (channel_id, group_name) WHERE done_at IS NULL;

-- Alerts the engine raised, one row per fingerprint (channel, group and
-- alert name): a restart neither forgets nor re-raises what is firing.
CREATE TABLE alerts (
    fingerprint  TEXT    NOT NULL PRIMARY KEY,
    channel_id   TEXT    NOT NULL,
    -- NULL for a channel-wide alert.
    group_name   TEXT,
    alertname    TEXT    NOT NULL,
    severity     TEXT    NOT NULL CHECK (severity IN ('warning', 'critical')),
    summary      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    resolved_at  INTEGER
) STRICT;
CREATE INDEX alerts_by_channel ON alerts (channel_id) WHERE resolved_at IS NULL;
