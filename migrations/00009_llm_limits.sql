-- +goose Up

-- LLM spend limits per shop (issue 11). They live on shops, not on
-- shop_llm_settings: that row exists only for a shop that brings its own
-- provider and is replaced as a whole, while these are money policies every
-- shop has, with defaults.

-- currency is the shop's currency (ISO 4217), the unit of its money
-- settings. Other money settings may need it too, hence IF NOT EXISTS.
ALTER TABLE shops ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT 'CNY'
    CONSTRAINT shops_currency_iso CHECK (currency ~ '^[A-Z]{3}$');

ALTER TABLE shops
    -- llm_max_tokens is sent as the completion limit of every LLM call and
    -- is the completion part of the worst case reserved against the cap.
    ADD COLUMN llm_max_tokens integer NOT NULL DEFAULT 400
        CONSTRAINT shops_llm_max_tokens_range CHECK (llm_max_tokens BETWEEN 1 AND 32768),
    -- llm_spend_cap_per_day_cents caps the LLM spend of a calendar day in
    -- Asia/Shanghai, in hundredths of the shop's currency; NULL = no cap,
    -- 0 = no LLM calls at all.
    ADD COLUMN llm_spend_cap_per_day_cents bigint
        CONSTRAINT shops_llm_spend_cap_nonnegative CHECK (llm_spend_cap_per_day_cents >= 0),
    -- llm_calls_per_user_per_hour caps the answers one end user gets from
    -- the LLM per clock hour; NULL = no cap, 0 = never the LLM.
    ADD COLUMN llm_calls_per_user_per_hour integer DEFAULT 60
        CONSTRAINT shops_llm_calls_per_user_nonnegative CHECK (llm_calls_per_user_per_hour >= 0);

-- +goose Down
ALTER TABLE shops
    DROP COLUMN llm_calls_per_user_per_hour,
    DROP COLUMN llm_spend_cap_per_day_cents,
    DROP COLUMN llm_max_tokens,
    DROP COLUMN IF EXISTS currency;
