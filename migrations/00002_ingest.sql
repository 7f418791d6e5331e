-- +goose Up
-- Per-shop request limits; NULL takes the edge's defaults.
ALTER TABLE shops
    ADD COLUMN rate_per_second      integer CHECK (rate_per_second > 0),
    ADD COLUMN rate_burst           integer CHECK (rate_burst > 0),
    ADD COLUMN user_rate_per_minute integer CHECK (user_rate_per_minute > 0),
    ADD COLUMN user_rate_burst      integer CHECK (user_rate_burst > 0);

-- Per-shop priority keywords. A shop with rules uses them instead of the
-- built-in Chinese and English defaults.
CREATE TABLE priority_rules (
    shop_id  text NOT NULL REFERENCES shops (id) ON DELETE CASCADE,
    priority text NOT NULL CHECK (priority IN ('p0', 'p1', 'p2')),
    keyword  text NOT NULL CHECK (length(keyword) BETWEEN 1 AND 64),
    PRIMARY KEY (shop_id, priority, keyword)
);

-- +goose Down
DROP TABLE priority_rules;
ALTER TABLE shops
    DROP COLUMN rate_per_second,
    DROP COLUMN rate_burst,
    DROP COLUMN user_rate_per_minute,
    DROP COLUMN user_rate_burst;
