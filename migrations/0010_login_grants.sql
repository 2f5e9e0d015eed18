-- linetokd schema, version 10: LINE Login user grants and the refresh
-- journal.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 10`. Only new tables: every earlier row is kept.
-- The version bump also covers the new event kinds (`login_*`), so an
-- older linetokd refuses this database instead of failing on them.
--
-- A grant is one user's LINE Login tokens on one login channel, known by
-- the user ID (`subject`) the importer gave. Both token values are stored
-- ONLY sealed (src/store/crypt.rs): AES-256-GCM under the database key
-- `enc_key_id`, the additional data binding each value to
-- (`login_grants`, channel, `access` | `refresh`, subject, key ID), so a
-- value copied to another row, kind or table fails to open. There is no
-- plaintext column; the module refuses to start without `[encryption]`.
--
-- `horizon_at` is when the refresh token dies (login + 90 days at LINE);
-- `horizon_estimated` is 1 when the login time was not given and the
-- horizon was estimated from the access token's remaining life (never
-- earlier than the true one). `next_refresh_at` is the rule's instant
-- (src/login/rules.rs), stored so the due grants are one index range.
-- `reauth_due_notified_at` is set once the "re-login due" notice went
-- out for this horizon: a restart does not repeat it. `lost_refresh` is 1
-- after a refresh was lost in a crash: its answer may have rotated the
-- refresh token, so the next `invalid_grant` is explained by it.

CREATE TABLE login_grants (
    channel_id             TEXT    NOT NULL,
    subject                TEXT    NOT NULL CHECK (length(subject) > 0),
    access_token_enc       BLOB    NOT NULL,
    refresh_token_enc      BLOB    NOT NULL,
    enc_key_id             INTEGER NOT NULL,
    access_expires_at      INTEGER NOT NULL,
    login_at               INTEGER,
    horizon_at             INTEGER NOT NULL,
    horizon_estimated      INTEGER NOT NULL CHECK (horizon_estimated IN (0, 1)),
    scope                  TEXT    NOT NULL DEFAULT '',
    state                  TEXT    NOT NULL
                           CHECK (state IN ('active', 'needs_login', 'revoked')),
    imported_at            INTEGER NOT NULL,
    last_refresh_at        INTEGER,
    consecutive_failures   INTEGER NOT NULL DEFAULT 0,
    retry_not_before       INTEGER,
    next_refresh_at        INTEGER NOT NULL,
    reauth_due_notified_at INTEGER,
    lost_refresh           INTEGER NOT NULL DEFAULT 0 CHECK (lost_refresh IN (0, 1)),
    PRIMARY KEY (channel_id, subject)
) STRICT;

CREATE INDEX login_grants_due ON login_grants (next_refresh_at) WHERE state = 'active';

-- The refresh journal, as `issue_intents` is for issuance: an intent is
-- written (and committed) before each refresh call, and closed in the
-- transaction that stores the answer. One left open at start was in
-- flight when the previous run stopped: LINE may have refreshed, and in
-- rotation mode the stored refresh token may be dead. It is closed as
-- `lost` and reported (event `login_lost_refresh`).

CREATE TABLE refresh_intents (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    channel_id TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    opened_at  INTEGER NOT NULL,
    closed_at  INTEGER,
    outcome    TEXT    CHECK (outcome IN ('refreshed', 'failed', 'lost', 'superseded')),
    CHECK ((closed_at IS NULL) = (outcome IS NULL))
) STRICT;

CREATE UNIQUE INDEX refresh_intents_open ON refresh_intents (channel_id, subject)
    WHERE closed_at IS NULL;
