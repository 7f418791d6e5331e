-- A bulk retry or cancel marks the actions it changes with its audit entry
-- (bulk_op), so its progress counts exactly those: not every action of the
-- filter (a kind alone matches a whole history of webhook deliveries, and
-- new ones keep coming at midnight). A later bulk operation that changes
-- an action takes it over.
--
-- Without a transaction, like 00021: the column is added in a moment and
-- the index (empty until a bulk operation) built CONCURRENTLY.

-- +goose NO TRANSACTION
-- +goose Up
ALTER TABLE outbox_actions ADD COLUMN IF NOT EXISTS bulk_op bigint;
DROP INDEX CONCURRENTLY IF EXISTS outbox_actions_bulk_op;
CREATE INDEX CONCURRENTLY outbox_actions_bulk_op ON outbox_actions (bulk_op, shop_id, state)
    WHERE bulk_op IS NOT NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS outbox_actions_bulk_op;
ALTER TABLE outbox_actions DROP COLUMN IF EXISTS bulk_op;
