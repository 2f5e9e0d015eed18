-- linetokd schema, version 5: what each alert receiver was sent.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 5`.
--
-- One row per (alert fingerprint, receiver name), describing one episode of
-- the alert: `started_at` is the `alerts.started_at` it belongs to, so a
-- row left by an earlier episode of the same fingerprint is recognised and
-- started afresh. With it a restart neither pages again inside the repeat
-- interval (last_sent_at) nor forgets to send a resolve (sent_count > 0 and
-- resolve_sent = 0), and a notification being retried keeps its id (the
-- Standard Webhooks `webhook-id`) across retries and restarts.
--
-- No foreign key to `alerts`: a receiver is configuration, not a row, and
-- a row outliving a receiver that was removed from the config is harmless
-- (it is pruned with its alert).

CREATE TABLE alert_notifications (
    fingerprint      TEXT    NOT NULL,
    receiver         TEXT    NOT NULL,
    -- The alerts.started_at of the episode this row describes (ms).
    started_at       INTEGER NOT NULL,
    -- When a firing notification was last delivered or given up (ms).
    last_sent_at     INTEGER,
    -- Firing notifications delivered in this episode.
    sent_count       INTEGER NOT NULL DEFAULT 0 CHECK (sent_count >= 0),
    -- 1 once the resolve was delivered or given up.
    resolve_sent     INTEGER NOT NULL DEFAULT 0 CHECK (resolve_sent IN (0, 1)),
    -- The notification in flight, if any: its stable id, what it says,
    -- when its first attempt was made, how many attempts failed and when
    -- the next one is due.
    pending_id       TEXT,
    pending_kind     TEXT    CHECK (pending_kind IN ('firing', 'resolved')),
    pending_since    INTEGER,
    pending_attempts INTEGER NOT NULL DEFAULT 0 CHECK (pending_attempts >= 0),
    pending_next_at  INTEGER,
    CHECK ((pending_id IS NULL) = (pending_kind IS NULL)),
    CHECK ((pending_id IS NULL) = (pending_since IS NULL)),
    CHECK ((pending_id IS NULL) = (pending_next_at IS NULL)),
    PRIMARY KEY (fingerprint, receiver)
) STRICT;

CREATE INDEX alert_notifications_pending ON alert_notifications (receiver, pending_id)
    WHERE pending_id IS NOT NULL;

-- The notifier reads firing alerts and the recently resolved ones.
CREATE INDEX alerts_by_resolved_at ON alerts (resolved_at) WHERE resolved_at IS NOT NULL;

-- What a `line` receiver pushed in a calendar month (UTC, 'YYYY-MM'):
-- messages counted against its monthly_message_budget, and whether LINE
-- refused with its monthly limit (429), after which nothing more is pushed
-- that month. Kept so a restart does not spend the budget again.
CREATE TABLE alert_receiver_months (
    receiver TEXT    NOT NULL,
    month    TEXT    NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0 CHECK (messages >= 0),
    stopped  INTEGER NOT NULL DEFAULT 0 CHECK (stopped IN (0, 1)),
    PRIMARY KEY (receiver, month)
) STRICT;
