-- linetokd schema, version 2: notes the daemon leaves for `linetokd status`
-- about itself rather than about a channel (the outcome of the last config
-- reload, for now). One row per key, overwritten. Never holds a secret.
CREATE TABLE daemon_notes (
    key   TEXT    NOT NULL PRIMARY KEY,
    value TEXT    NOT NULL,
    at    INTEGER NOT NULL
) STRICT;
