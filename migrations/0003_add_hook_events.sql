-- linetokd schema, version 3: hook events.
--
-- Applied by src/store/migrate.rs inside one transaction together with
-- `PRAGMA user_version = 3`.
--
-- The event history gains two kinds, 'hook_succeeded' and 'hook_failed'
-- (a group's on_rotate program ran after a new token, or failed after its
-- retries). `events.kind` is free TEXT, so the rows need no schema change;
-- the version bump is the point: a linetokd that knows only an older version would
-- read these rows as a corrupt database, and bumping the version makes it
-- refuse the file up front ("written by a newer linetokd") instead.
--
-- Status shows each group's latest hook result, so the history gets an
-- index that finds a group's newest events without scanning its channel's.

CREATE INDEX events_by_group ON events (channel_id, group_name, id);
