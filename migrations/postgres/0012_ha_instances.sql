-- linetokd schema for PostgreSQL, version 12: the instances alive under
-- high availability (docs/design.md section 14.4).
--
-- The twin of migrations/0012_ha_instances.sql (read it for what each
-- column means), translated as the baseline is (INTEGER → BIGINT, STRICT
-- dropped). The statements on this table are in src/store/pg/lease.rs;
-- every instant they write is the database's `clock_timestamp()` in unix
-- milliseconds.

CREATE TABLE ha_instances (
    instance_id TEXT   NOT NULL PRIMARY KEY CHECK (length(instance_id) > 0),
    alive_until BIGINT NOT NULL,
    incarnation TEXT   NOT NULL,
    config      TEXT   NOT NULL
);
