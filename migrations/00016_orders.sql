-- +goose Up
-- Order answers (issue 15, docs/architecture.md).

-- order_answers: 'llm' lets the LLM answer order and logistics questions with
-- its tools (the shop's data answers them directly only when the LLM cannot);
-- 'direct' answers them from the shop's data always, without the LLM.
ALTER TABLE shops ADD COLUMN order_answers text NOT NULL DEFAULT 'llm'
    CHECK (order_answers IN ('llm', 'direct'));

-- A shop's own wording of peakdesk's customer texts (workers/texts keys),
-- text/template templates with the same fields as the built-in ones,
-- validated when saved.
CREATE TABLE shop_texts (
    shop_id    text NOT NULL REFERENCES shops (id),
    lang       text NOT NULL CHECK (lang IN ('zh', 'en')),
    key        text NOT NULL CHECK (key ~ '^[a-z_.]{1,64}$'),
    template   text NOT NULL CHECK (length(template) BETWEEN 1 AND 4000),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, lang, key)
);

-- Replies answered from the shop's order data without the LLM: source
-- 'order'. The constraint is extended as it stands (other migrations add
-- sources too), not rewritten.
-- +goose StatementBegin
DO $$
DECLARE def text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO def FROM pg_constraint
    WHERE conname = 'replies_source_check' AND conrelid = 'replies'::regclass;
    IF def NOT LIKE '%''order''::text%' THEN
        ALTER TABLE replies DROP CONSTRAINT replies_source_check;
        EXECUTE 'ALTER TABLE replies ADD CONSTRAINT replies_source_check '
            || replace(def, 'ARRAY[', 'ARRAY[''order''::text, ');
    END IF;
END $$;
-- +goose StatementEnd

-- A reply that promised an order follow-up says so (follow_up in the reply):
-- found by the reply's id.
CREATE INDEX outbox_actions_followup_reply ON outbox_actions (reply_id) WHERE kind = 'order.followup';

-- +goose Down
DROP INDEX outbox_actions_followup_reply;
DELETE FROM replies WHERE source = 'order';
-- +goose StatementBegin
DO $$
DECLARE def text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO def FROM pg_constraint
    WHERE conname = 'replies_source_check' AND conrelid = 'replies'::regclass;
    ALTER TABLE replies DROP CONSTRAINT replies_source_check;
    EXECUTE 'ALTER TABLE replies ADD CONSTRAINT replies_source_check ' || replace(def, '''order''::text, ', '');
END $$;
-- +goose StatementEnd
DROP TABLE shop_texts;
ALTER TABLE shops DROP COLUMN order_answers;
