-- +goose Up
-- The W3C traceparent of the message whose reply promised an action, so the
-- relay's calls to the shop and its logs continue that message's trace.
-- Empty when unknown (actions written before, or outside any request); the
-- relay then starts a trace per attempt.
ALTER TABLE outbox_actions ADD COLUMN trace text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE outbox_actions DROP COLUMN trace;
