-- linetokd schema, version 7: token values may be stored encrypted.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 7`. Every row is kept, as plaintext; the store
-- seals them when it is opened with `[encryption]` (src/store/values.rs),
-- so this file needs no key.
--
-- A token's value is in exactly one of `access_token` (plaintext) or
-- `access_token_enc` (sealed: version, algorithm, key ID, nonce,
-- ciphertext, tag; src/store/crypt.rs), and `enc_key_id` repeats the
-- sealed value's key ID so "rows per key" is an index lookup. SQLite
-- cannot drop a NOT NULL constraint in place, so the table is rebuilt.

CREATE TABLE tokens_v7 (
    key_id           TEXT    NOT NULL PRIMARY KEY,
    channel_id       TEXT    NOT NULL,
    group_name       TEXT    NOT NULL,
    -- NULL when the value is sealed in access_token_enc.
    access_token     TEXT    CHECK (access_token IS NULL OR length(access_token) > 0),
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'live'
                     CHECK (state IN ('live', 'revoked', 'expired', 'gone')),
    state_reason     TEXT,
    state_changed_at INTEGER NOT NULL,
    last_verified_at INTEGER,
    intent_id        INTEGER REFERENCES issue_intents (id),
    refused_at       INTEGER,
    access_token_enc BLOB,
    enc_key_id       INTEGER CHECK (enc_key_id IS NULL OR enc_key_id BETWEEN 0 AND 4294967295),
    FOREIGN KEY (channel_id, group_name) REFERENCES groups (channel_id, name),
    CHECK ((access_token IS NULL) <> (access_token_enc IS NULL)),
    CHECK ((access_token_enc IS NULL) = (enc_key_id IS NULL))
) STRICT;

INSERT INTO tokens_v7 (key_id, channel_id, group_name, access_token, issued_at, expires_at,
                       state, state_reason, state_changed_at, last_verified_at, intent_id,
                       refused_at)
    SELECT key_id, channel_id, group_name, access_token, issued_at, expires_at,
           state, state_reason, state_changed_at, last_verified_at, intent_id, refused_at
    FROM tokens;

DROP TABLE tokens;
ALTER TABLE tokens_v7 RENAME TO tokens;

CREATE INDEX tokens_by_group ON tokens (channel_id, group_name, issued_at);
CREATE INDEX tokens_live_by_channel ON tokens (channel_id, expires_at) WHERE state = 'live';
-- Rows per key ("plaintext" is NULL): status, metrics, and the re-encryption
-- after the active key changed.
CREATE INDEX tokens_by_enc_key ON tokens (enc_key_id);

-- How many values each database key has sealed, ever: a key is refused
-- past 2^31 (random 96-bit nonces; NIST SP 800-38D).
CREATE TABLE encryptions (
    enc_key_id INTEGER NOT NULL PRIMARY KEY,
    sealed     INTEGER NOT NULL DEFAULT 0 CHECK (sealed >= 0)
) STRICT;
