-- +goose Up
-- Every shop signs its reply webhooks (Peakdesk-Signature, Stripe's scheme),
-- so every shop has a webhook secret: 32 random bytes from pgcrypto's
-- gen_random_bytes (a trusted extension since Postgres 13: the database
-- owner may create it), in hex. New rows get one by default, the shops of
-- before get one here, and the CHECK keeps anyone from storing an empty one.
CREATE EXTENSION IF NOT EXISTS pgcrypto;

ALTER TABLE shop_api_settings
    ALTER COLUMN webhook_secret SET DEFAULT encode(gen_random_bytes(32), 'hex');

-- gen_random_bytes is volatile: one secret per row.
UPDATE shop_api_settings
SET webhook_secret = encode(gen_random_bytes(32), 'hex'), updated_at = now()
WHERE webhook_secret = '';

INSERT INTO shop_api_settings (shop_id)
SELECT id FROM shops
ON CONFLICT (shop_id) DO NOTHING;

ALTER TABLE shop_api_settings
    ADD CONSTRAINT shop_api_settings_webhook_secret_set CHECK (webhook_secret <> '');

-- +goose Down
ALTER TABLE shop_api_settings DROP CONSTRAINT shop_api_settings_webhook_secret_set;
ALTER TABLE shop_api_settings ALTER COLUMN webhook_secret SET DEFAULT '';
-- The generated secrets stay: they sign nothing the old code cannot ignore.
