-- +goose Up
-- Money policies (docs/policies.md). Every promise that costs a shop money is
-- first a grant row, taken by the LLM tool that promises it in a short
-- transaction of its own and confirmed in the reply's transaction together
-- with the outbox action that carries it out. Unique indexes and a per-shop
-- lock make the policies race-free: two turns can never both take the last
-- unit of a budget, nor both refund one order.

ALTER TABLE shops
    -- Coupons one customer may get in any 24 hours, over all conversations.
    ADD COLUMN coupon_per_user_per_day     integer NOT NULL DEFAULT 1
        CHECK (coupon_per_user_per_day >= 0),
    -- Coupon value the shop gives away per calendar day (Asia/Shanghai).
    ADD COLUMN coupon_budget_per_day_cents bigint NOT NULL DEFAULT 50000
        CHECK (coupon_budget_per_day_cents >= 0);

CREATE TABLE money_grants (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shop_id         text NOT NULL REFERENCES shops (id),
    kind            text NOT NULL CHECK (kind IN ('coupon', 'refund')),
    user_id         text NOT NULL,
    -- order_id is '' for a coupon not tied to an order.
    order_id        text NOT NULL DEFAULT '',
    conversation_id text NOT NULL,
    amount_cents    bigint NOT NULL CHECK (amount_cents >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- A grant nobody confirmed by expires_at belongs to a turn that failed
    -- or died: it lapses and no longer counts.
    expires_at      timestamptz NOT NULL,
    -- Set in the reply's transaction, with the action that carries it out.
    confirmed_at    timestamptz,
    -- Set when the grant stops counting: it lapsed, or its action ended
    -- dead or canceled (nothing was given).
    released_at     timestamptz
);
CREATE UNIQUE INDEX money_grants_refund_order ON money_grants (shop_id, order_id)
    WHERE kind = 'refund' AND released_at IS NULL;
CREATE UNIQUE INDEX money_grants_coupon_order ON money_grants (shop_id, order_id)
    WHERE kind = 'coupon' AND order_id <> '' AND released_at IS NULL;
CREATE INDEX money_grants_coupon_user ON money_grants (shop_id, user_id, created_at)
    WHERE kind = 'coupon' AND released_at IS NULL;
CREATE INDEX money_grants_coupon_day ON money_grants (shop_id, created_at)
    WHERE kind = 'coupon' AND released_at IS NULL;
CREATE INDEX money_grants_unconfirmed ON money_grants (shop_id, conversation_id)
    WHERE confirmed_at IS NULL AND released_at IS NULL;

ALTER TABLE outbox_actions ADD COLUMN grant_id bigint REFERENCES money_grants (id);
CREATE UNIQUE INDEX outbox_actions_grant ON outbox_actions (grant_id) WHERE grant_id IS NOT NULL;

-- An action that ends dead or canceled gave nothing: its grant stops
-- counting. An operator retry brings it back, which fails on the unique
-- indexes above if another refund (or coupon) of the order is live by then.
-- +goose StatementBegin
CREATE FUNCTION money_grants_follow_action() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('dead', 'canceled') AND OLD.state NOT IN ('dead', 'canceled') THEN
        UPDATE money_grants SET released_at = now() WHERE id = NEW.grant_id AND released_at IS NULL;
    ELSIF OLD.state IN ('dead', 'canceled') AND NEW.state NOT IN ('dead', 'canceled') THEN
        UPDATE money_grants SET released_at = NULL WHERE id = NEW.grant_id AND released_at IS NOT NULL;
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER outbox_actions_grant_state AFTER UPDATE OF state ON outbox_actions
    FOR EACH ROW WHEN (NEW.grant_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION money_grants_follow_action();

-- Money actions promised before grants existed keep counting: one grant per
-- live action (numbered like it), the first per order where several were.
INSERT INTO money_grants (id, shop_id, kind, user_id, order_id, conversation_id, amount_cents, created_at,
                          expires_at, confirmed_at)
OVERRIDING SYSTEM VALUE
SELECT DISTINCT ON (a.shop_id, k.kind_of, k.order_of_key)
       a.id, a.shop_id, k.kind_of, coalesce(a.payload ->> 'user_id', ''), coalesce(a.payload ->> 'order_id', ''),
       a.conversation_id, coalesce((a.payload ->> 'amount_cents')::bigint, 0), a.created_at,
       a.created_at, a.created_at
FROM outbox_actions a,
     LATERAL (SELECT CASE a.kind WHEN 'refund.request' THEN 'refund' ELSE 'coupon' END AS kind_of,
                     CASE WHEN coalesce(a.payload ->> 'order_id', '') = '' THEN 'action:' || a.id
                          ELSE a.payload ->> 'order_id' END AS order_of_key) k
WHERE a.kind IN ('refund.request', 'coupon.issue') AND a.state NOT IN ('dead', 'canceled')
ORDER BY a.shop_id, k.kind_of, k.order_of_key, a.id;
UPDATE outbox_actions a SET grant_id = a.id WHERE EXISTS (SELECT 1 FROM money_grants g WHERE g.id = a.id);
SELECT setval(pg_get_serial_sequence('money_grants', 'id'), coalesce(max(id), 0) + 1, false) FROM money_grants;

-- +goose Down
DROP TRIGGER outbox_actions_grant_state ON outbox_actions;
DROP FUNCTION money_grants_follow_action();
DROP INDEX outbox_actions_grant;
ALTER TABLE outbox_actions DROP COLUMN grant_id;
DROP TABLE money_grants;
ALTER TABLE shops DROP COLUMN coupon_per_user_per_day, DROP COLUMN coupon_budget_per_day_cents;
