-- +goose Up
-- Abuse limits of the ingest edge (docs/policies.md), per shop:
-- p0_per_user_per_hour: how often one customer may get p0 from keywords
--   (0: keywords never give p0; the priority:urgent scope still does);
-- read_per_user_per_minute: GETs of messages and conversations and event
--   stream opens by one customer;
-- sse_streams_per_user: event streams one customer may hold open on one
--   edge process (0: polling only).
ALTER TABLE shops
    ADD COLUMN p0_per_user_per_hour     integer NOT NULL DEFAULT 10 CHECK (p0_per_user_per_hour >= 0),
    ADD COLUMN read_per_user_per_minute integer NOT NULL DEFAULT 120 CHECK (read_per_user_per_minute > 0),
    ADD COLUMN sse_streams_per_user     integer NOT NULL DEFAULT 5 CHECK (sse_streams_per_user >= 0);

-- Each shop's own token-signing keys (HS256). A token names its key in the
-- JWT header's kid. Rotation gives the shop a new key and the old one a
-- not_after (the overlap), after which tokens signed with it are refused.
-- The current key is the one without not_after; there is at most one.
CREATE TABLE shop_keys (
    kid        text PRIMARY KEY CHECK (kid ~ '^[a-z0-9_-]{8,64}$'),
    shop_id    text NOT NULL REFERENCES shops (id) ON DELETE CASCADE,
    -- secret is the HMAC key itself (its UTF-8 bytes); never logged.
    secret     text NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    not_after  timestamptz
);
CREATE UNIQUE INDEX shop_keys_current ON shop_keys (shop_id) WHERE not_after IS NULL;
CREATE INDEX shop_keys_shop ON shop_keys (shop_id, created_at);

-- +goose Down
DROP TABLE shop_keys;
ALTER TABLE shops
    DROP COLUMN p0_per_user_per_hour,
    DROP COLUMN read_per_user_per_minute,
    DROP COLUMN sse_streams_per_user;
