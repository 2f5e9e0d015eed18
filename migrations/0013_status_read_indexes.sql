-- linetokd schema, version 13: partial indexes for the reads `status` makes
-- across all channels at once.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 13`; its PostgreSQL twin is
-- migrations/postgres/0013_status_read_indexes.sql.
--
-- Events and issue intents are history: they grow with every rotation,
-- while these reads want a few rows of them. Without these indexes each
-- read scanned the whole table (at 100,000 groups, a tenth of `status`'s
-- time on a fresh database, and more every month). Each index holds only
-- the rows its read wants, so it costs nothing on the writes of the
-- common path (an issued token's events and intent are neither).

-- Each group's latest hook result (`Store::latest_hook_results`). The
-- query names these two kinds literally: SQLite uses a partial index only
-- when the query's WHERE contains the index's.
CREATE INDEX events_hook_results ON events (channel_id, group_name, id)
    WHERE kind IN ('hook_succeeded', 'hook_failed');

-- Issue attempts LINE may have answered with a token nobody recorded
-- (lost in a crash, or failed in a way LINE may have issued anyway):
-- what capacity counts until a reconcile settles them, and what a
-- takeover holds a channel for.
CREATE INDEX issue_intents_maybe_issued ON issue_intents (channel_id, id)
    WHERE outcome IN ('failed', 'lost') AND maybe_issued = 1;
