-- A group is kept with channel access tokens v2.1 (the default, and what
-- every group so far was) or with short-lived tokens, which LINE issues
-- with the channel secret, never lists, and evicts by the 31st. The kind
-- decides which pool of 30 the group's tokens count in and how they are
-- issued, verified and revoked; a token's own kind is read from its
-- identity (short-lived ones are keyed `sl:` + a fingerprint).

ALTER TABLE groups ADD COLUMN kind TEXT NOT NULL DEFAULT 'v2.1'
    CHECK (kind IN ('v2.1', 'short-lived'));

-- A short-lived token of ours that LINE's verify refused with time left is
-- marked gone (evicted, or revoked outside linetokd); the engine raises an
-- alert for a while after each. Such rows are few; this finds them without
-- reading a channel's history.
CREATE INDEX tokens_short_lived_gone ON tokens (channel_id, state_changed_at)
    WHERE state = 'gone' AND substr(key_id, 1, 3) = 'sl:';
