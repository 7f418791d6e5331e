-- +goose Up
-- Replies pushed later on a conversation (an order follow-up, the notice
-- that a human takes over) answer no single message.
ALTER TABLE replies DROP CONSTRAINT replies_source_check;
ALTER TABLE replies ADD CONSTRAINT replies_source_check
    CHECK (source IN ('llm', 'llm_secondary', 'faq', 'handoff', 'cache', 'followup'));

-- +goose Down
DELETE FROM replies WHERE source = 'followup';
ALTER TABLE replies DROP CONSTRAINT replies_source_check;
ALTER TABLE replies ADD CONSTRAINT replies_source_check
    CHECK (source IN ('llm', 'llm_secondary', 'faq', 'handoff', 'cache'));
