-- A bulk retry or cancel marks the actions it changed with its audit entry
-- (bulk_op), so its progress counts exactly those: not every action of the
-- filter (a kind alone matches a whole history of webhook deliveries, and
-- new ones keep coming at midnight). A later bulk operation that changes
-- the action takes it over.

-- +goose Up
ALTER TABLE outbox_actions ADD COLUMN bulk_op bigint;
CREATE INDEX outbox_actions_bulk_op ON outbox_actions (bulk_op, shop_id, state) WHERE bulk_op IS NOT NULL;

-- +goose Down
DROP INDEX outbox_actions_bulk_op;
ALTER TABLE outbox_actions DROP COLUMN bulk_op;
