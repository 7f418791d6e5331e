-- The outbox's webhook deliveries carry texts as written: a reply.created
-- event its reply, a message.created desk event the customer's message. They
-- expire with the shop's retention like the messages and replies they copy:
-- the retention job masks every "text" member of a delivered (or given up)
-- webhook's payload, once, and marks the action redacted. The action itself
-- stays, as the record of what was delivered.
--
-- Without a transaction, so that the running version keeps answering: the
-- column is added in a moment (no default, no rewrite) and the index built
-- CONCURRENTLY, which reads the table without blocking its writes. A build
-- that failed half way leaves an invalid index; it is dropped on the retry.

-- +goose NO TRANSACTION
-- +goose Up
ALTER TABLE outbox_actions ADD COLUMN IF NOT EXISTS redacted_at timestamptz;
DROP INDEX CONCURRENTLY IF EXISTS outbox_actions_unredacted;
-- What the job looks for, per shop, oldest first; about one retention
-- period of webhook deliveries.
CREATE INDEX CONCURRENTLY outbox_actions_unredacted ON outbox_actions (shop_id, created_at)
    WHERE redacted_at IS NULL AND kind = 'webhook.deliver';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS outbox_actions_unredacted;
ALTER TABLE outbox_actions DROP COLUMN IF EXISTS redacted_at;
