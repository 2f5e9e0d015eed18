-- linetokd schema for PostgreSQL, version 13: partial indexes for the
-- reads `status` makes across all channels at once.
--
-- The twin of migrations/0013_status_read_indexes.sql (read it for why):
-- the same indexes with the same names and conditions.

CREATE INDEX events_hook_results ON events (channel_id, group_name, id)
    WHERE kind IN ('hook_succeeded', 'hook_failed');

CREATE INDEX issue_intents_maybe_issued ON issue_intents (channel_id, id)
    WHERE outcome IN ('failed', 'lost') AND maybe_issued = 1;
