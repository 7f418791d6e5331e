-- +goose Up

-- FAQ entries per shop: the retrieval fallback when the LLM cannot answer,
-- context given to the LLM, and the ingest edge's instant answers when it
-- sheds load. A question is unique per shop, so a re-import updates answers.
CREATE TABLE faq_entries (
    id         bigserial PRIMARY KEY,
    shop_id    text NOT NULL REFERENCES shops (id),
    question   text NOT NULL CHECK (length(question) BETWEEN 1 AND 1000),
    answer     text NOT NULL CHECK (length(answer) BETWEEN 1 AND 4000),
    tags       text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT faq_entries_shop_question UNIQUE (shop_id, question)
);

-- faq_versions counts changes to each shop's FAQ. Every process that keeps
-- FAQ indexes polls this small table and rebuilds a shop's index when its
-- version moves; a trigger bumps it so no writer can forget to.
CREATE TABLE faq_versions (
    shop_id    text PRIMARY KEY REFERENCES shops (id),
    version    bigint NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
CREATE FUNCTION faq_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shop text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        shop := OLD.shop_id;
    ELSE
        shop := NEW.shop_id;
    END IF;
    INSERT INTO faq_versions AS v (shop_id) VALUES (shop)
    ON CONFLICT (shop_id) DO UPDATE SET version = v.version + 1, updated_at = now();
    IF TG_OP = 'UPDATE' AND OLD.shop_id <> NEW.shop_id THEN
        INSERT INTO faq_versions AS v (shop_id) VALUES (OLD.shop_id)
        ON CONFLICT (shop_id) DO UPDATE SET version = v.version + 1, updated_at = now();
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER faq_entries_bump_version
    AFTER INSERT OR UPDATE OR DELETE ON faq_entries
    FOR EACH ROW EXECUTE FUNCTION faq_bump_version();

-- Per-shop LLM provider settings. Empty values inherit the process-wide
-- default (PEAKDESK_LLM_*): a shop may bring only its own key, or its own
-- model chain on the default provider.
CREATE TABLE shop_llm_settings (
    shop_id    text PRIMARY KEY REFERENCES shops (id),
    base_url   text NOT NULL DEFAULT '',
    api_key    text NOT NULL DEFAULT '',
    -- models is the chain to try in order: primary, then secondary, ...
    models     text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One PII audit record per answer: how many of each kind of personal data
-- were masked in what was sent to the LLM and in the reply. The masked values
-- themselves are never stored. message_id is the first message answered; a
-- redelivered message's second answer replaces the record.
CREATE TABLE pii_audit (
    shop_id         text NOT NULL REFERENCES shops (id),
    message_id      text NOT NULL,
    conversation_id text NOT NULL,
    message_ids     text[] NOT NULL,
    phone           integer NOT NULL DEFAULT 0,
    id_card         integer NOT NULL DEFAULT 0,
    bank_card       integer NOT NULL DEFAULT 0,
    email           integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, message_id)
);
CREATE INDEX pii_audit_shop_created ON pii_audit (shop_id, created_at);

-- The price of a reply, from the configured price table (micro-USD).
ALTER TABLE replies ADD COLUMN cost_micro_usd bigint NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE replies DROP COLUMN cost_micro_usd;
DROP TABLE pii_audit;
DROP TABLE shop_llm_settings;
DROP TRIGGER faq_entries_bump_version ON faq_entries;
DROP FUNCTION faq_bump_version();
DROP TABLE faq_versions;
DROP TABLE faq_entries;
