-- +goose Up
-- Web origins whose pages may call the chat API for a shop from a browser
-- (CORS): scheme://host[:port], as browsers send them in the Origin header.
-- The GIN index answers a preflight, which names no shop: is this origin
-- allowed by any shop?
ALTER TABLE shops ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
CREATE INDEX shops_allowed_origins ON shops USING gin (allowed_origins);

-- +goose Down
DROP INDEX shops_allowed_origins;
ALTER TABLE shops DROP COLUMN allowed_origins;
