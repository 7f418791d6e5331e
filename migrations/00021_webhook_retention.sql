-- The outbox's webhook deliveries carry texts as written: a reply.created
-- event its reply, a message.created desk event the customer's message. They
-- expire with the shop's retention like the messages and replies they copy:
-- the retention job masks every "text" member of the payload, once, and
-- marks the action redacted. The action itself stays, as the record of what
-- was delivered.

-- +goose Up
ALTER TABLE outbox_actions ADD COLUMN redacted_at timestamptz;
-- What the job looks for, per shop, oldest first; about one retention
-- period of webhook deliveries.
CREATE INDEX outbox_actions_unredacted ON outbox_actions (shop_id, created_at)
    WHERE redacted_at IS NULL AND kind = 'webhook.deliver';

-- +goose Down
DROP INDEX outbox_actions_unredacted;
ALTER TABLE outbox_actions DROP COLUMN redacted_at;
