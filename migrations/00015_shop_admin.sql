-- +goose Up
-- Shop administration (docs/integration.md): the settings a shop is run by,
-- changed through /v1/admin/shops, `peakdesk shop` and the console, and a
-- notification that tells every process at once.

-- The language customers are answered in when what they wrote does not
-- tell (workers/texts).
ALTER TABLE shops
    ADD COLUMN language text NOT NULL DEFAULT 'zh' CONSTRAINT shops_language CHECK (language IN ('zh', 'en')),
    -- Admission thresholds of this shop's messages; NULL = the process
    -- settings (PEAKDESK_ADMISSION_*). The backlog they are compared with
    -- is the desk's, shared by every shop.
    ADD COLUMN admission_max_wait_p0_ms integer CONSTRAINT shops_admission_p0 CHECK (admission_max_wait_p0_ms > 0),
    ADD COLUMN admission_max_wait_p1_ms integer CONSTRAINT shops_admission_p1 CHECK (admission_max_wait_p1_ms > 0),
    ADD COLUMN admission_max_wait_p2_ms integer CONSTRAINT shops_admission_p2 CHECK (admission_max_wait_p2_ms > 0),
    ADD COLUMN admission_min_backlog integer CONSTRAINT shops_admission_min_backlog CHECK (admission_min_backlog > 0);

-- The LLM's instructions for this shop ('' = the default prompt) and its
-- sampling temperature (NULL = the provider's default).
ALTER TABLE shop_llm_settings
    ADD COLUMN system_prompt text NOT NULL DEFAULT ''
        CONSTRAINT shop_llm_settings_prompt_length CHECK (length(system_prompt) <= 8000),
    ADD COLUMN temperature real CONSTRAINT shop_llm_settings_temperature CHECK (temperature BETWEEN 0 AND 2);

-- The model chain, one row per model in order, each with its own provider:
-- a chain can fail over to another provider. Empty base_url / api_key
-- inherit shop_llm_settings' (then the process default). api_key is sealed
-- (storage/secrets). shop_llm_settings.models stays the chain's names.
CREATE TABLE shop_llm_models (
    shop_id  text NOT NULL REFERENCES shops (id) ON DELETE CASCADE,
    position integer NOT NULL CHECK (position BETWEEN 0 AND 7),
    model    text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    base_url text NOT NULL DEFAULT '',
    api_key  text NOT NULL DEFAULT '',
    PRIMARY KEY (shop_id, position)
);
INSERT INTO shop_llm_models (shop_id, position, model)
SELECT s.shop_id, m.ord - 1, m.model
FROM shop_llm_settings s, unnest(s.models) WITH ORDINALITY AS m (model, ord)
WHERE m.ord <= 8 AND m.model <> '';

-- Every change of a shop's settings notifies peakdesk_settings with the
-- shop id, whoever makes it (the admin API, the CLI, SQL by hand): every
-- process drops what it cached of the shop at once. Postgres folds equal
-- notifications of one transaction into one.
-- +goose StatementBegin
CREATE FUNCTION shop_settings_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := to_jsonb(OLD);
    ELSE
        r := to_jsonb(NEW);
    END IF;
    PERFORM pg_notify('peakdesk_settings', coalesce(r ->> 'shop_id', r ->> 'id'));
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER shops_settings_changed AFTER INSERT OR UPDATE OR DELETE ON shops
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();
CREATE TRIGGER priority_rules_changed AFTER INSERT OR UPDATE OR DELETE ON priority_rules
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();
CREATE TRIGGER shop_llm_settings_changed AFTER INSERT OR UPDATE OR DELETE ON shop_llm_settings
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();
CREATE TRIGGER shop_llm_models_changed AFTER INSERT OR UPDATE OR DELETE ON shop_llm_models
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();
CREATE TRIGGER shop_api_settings_changed AFTER INSERT OR UPDATE OR DELETE ON shop_api_settings
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();
CREATE TRIGGER shop_keys_changed AFTER INSERT OR UPDATE OR DELETE ON shop_keys
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();
-- FAQ changes bump faq_versions (a trigger on faq_entries).
CREATE TRIGGER faq_versions_changed AFTER INSERT OR UPDATE OR DELETE ON faq_versions
    FOR EACH ROW EXECUTE FUNCTION shop_settings_notify();

-- +goose Down
DROP TRIGGER faq_versions_changed ON faq_versions;
DROP TRIGGER shop_keys_changed ON shop_keys;
DROP TRIGGER shop_api_settings_changed ON shop_api_settings;
DROP TRIGGER shop_llm_models_changed ON shop_llm_models;
DROP TRIGGER shop_llm_settings_changed ON shop_llm_settings;
DROP TRIGGER priority_rules_changed ON priority_rules;
DROP TRIGGER shops_settings_changed ON shops;
DROP FUNCTION shop_settings_notify();
DROP TABLE shop_llm_models;
ALTER TABLE shop_llm_settings DROP COLUMN temperature, DROP COLUMN system_prompt;
ALTER TABLE shops
    DROP COLUMN admission_min_backlog,
    DROP COLUMN admission_max_wait_p2_ms,
    DROP COLUMN admission_max_wait_p1_ms,
    DROP COLUMN admission_max_wait_p0_ms,
    DROP COLUMN language;
-- Sealed secrets stay sealed: a version from before this migration cannot
-- read them.
