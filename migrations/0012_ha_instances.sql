-- linetokd schema, version 12: the instances alive under high
-- availability (docs/design.md section 14.4).
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 12`; its PostgreSQL twin is
-- migrations/postgres/0012_ha_instances.sql. A single instance on SQLite
-- leaves the table empty: it matters where several instances share one
-- PostgreSQL database, but both backends keep one schema per version.

-- One row per instance that ever ran under `[ha]`: its instance ID and
-- the instant (the DATABASE's clock, unix milliseconds) until which it
-- counts as alive. Each instance pushes its own row forward every few
-- seconds; the channels are spread over the instances whose row is still
-- in the future (rendezvous hashing, src/ha/spread.rs). A stopped
-- instance's row simply ages; rows older than a day are deleted by the
-- instances that push theirs. `incarnation` is random per process: a row
-- still alive under another incarnation means a second process uses the
-- same instance ID (or a previous run of this one has not aged out yet),
-- and the newcomer waits rather than fight it for the leases. `config` is
-- a digest of the channels and groups the instance's config names: the
-- instances share one set of groups in the store, so they warn when
-- theirs differ.
CREATE TABLE ha_instances (
    instance_id TEXT    NOT NULL PRIMARY KEY CHECK (length(instance_id) > 0),
    alive_until INTEGER NOT NULL,
    incarnation TEXT    NOT NULL,
    config      TEXT    NOT NULL
) STRICT;
