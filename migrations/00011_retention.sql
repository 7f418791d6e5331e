-- +goose Up
-- How long a shop keeps its customers' words as written. After it, the text
-- of a message or reply is replaced by its masked form (personal data masked)
-- by the retention job of the relay role, once: redacted_at marks the rows
-- done, so the job never reads them again.
ALTER TABLE shops
    ADD COLUMN retention_days integer NOT NULL DEFAULT 30 CHECK (retention_days BETWEEN 1 AND 3650);
ALTER TABLE messages ADD COLUMN redacted_at timestamptz;
ALTER TABLE replies ADD COLUMN redacted_at timestamptz;
-- What the job looks for, per shop, oldest first. Rows leave the index as
-- they are redacted, so it holds about one retention period of rows.
CREATE INDEX messages_unredacted ON messages (shop_id, created_at) WHERE redacted_at IS NULL;
CREATE INDEX replies_unredacted ON replies (shop_id, created_at) WHERE redacted_at IS NULL;

-- +goose Down
DROP INDEX replies_unredacted;
DROP INDEX messages_unredacted;
ALTER TABLE replies DROP COLUMN redacted_at;
ALTER TABLE messages DROP COLUMN redacted_at;
ALTER TABLE shops DROP COLUMN retention_days;
