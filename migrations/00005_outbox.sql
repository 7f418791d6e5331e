-- +goose Up
-- Trigram indexes make the operator search (text in payload or error) fast.
-- pg_trgm is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- How peakdesk reaches a shop's own systems, and the policy its AI desk
-- applies before promising anything. A shop without a row uses the global
-- shop API URL and the built-in policy defaults (NULL caps mean the same).
CREATE TABLE shop_api_settings (
    shop_id          text PRIMARY KEY REFERENCES shops (id),
    -- base_url empty = the global default (PEAKDESK_SHOP_API_URL).
    base_url         text NOT NULL DEFAULT '',
    -- secret is sent as a bearer token to the shop API; never logged.
    secret           text NOT NULL DEFAULT '',
    -- webhook_url empty = replies are not delivered by webhook.
    webhook_url      text NOT NULL DEFAULT '',
    webhook_secret   text NOT NULL DEFAULT '',
    coupon_max_cents bigint CHECK (coupon_max_cents >= 0),
    refund_max_cents bigint CHECK (refund_max_cents >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per side effect promised in a reply (or owed to the shop). Rows are
-- never deleted by peakdesk: a final state is the record of what happened.
CREATE TABLE outbox_actions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shop_id          text NOT NULL REFERENCES shops (id),
    conversation_id  text NOT NULL DEFAULT '',
    reply_id         text NOT NULL DEFAULT '',
    kind             text NOT NULL CHECK (kind IN ('coupon.issue', 'refund.request', 'webhook.deliver', 'order.followup')),
    payload          jsonb NOT NULL,
    idempotency_key  text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    -- Bumped by an operator retry of a rejected action: the shop keeps its
    -- rejection under the old key, so the retry needs a fresh one.
    key_generation   integer NOT NULL DEFAULT 0,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'retrying', 'succeeded', 'dead', 'canceled')),
    -- attempts numbers the attempt rows; run_attempts counts those since the
    -- action was created or last retried by an operator.
    attempts         integer NOT NULL DEFAULT 0,
    run_attempts     integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts > 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text NOT NULL DEFAULT '',
    last_http_status integer,
    rejected         boolean NOT NULL DEFAULT false,
    result           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    CONSTRAINT outbox_actions_running_has_lease
        CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- The relay's two claims: due rows, and running rows whose lease expired.
CREATE INDEX outbox_actions_due ON outbox_actions (next_attempt_at) WHERE state IN ('pending', 'retrying');
CREATE INDEX outbox_actions_leases ON outbox_actions (lease_expires_at) WHERE state = 'running';
-- Operator filters (newest first), metrics (GROUP BY state, kind) and policy checks.
CREATE INDEX outbox_actions_shop ON outbox_actions (shop_id, id);
CREATE INDEX outbox_actions_state_kind ON outbox_actions (state, kind, id);
CREATE INDEX outbox_actions_conversation ON outbox_actions (conversation_id) WHERE conversation_id <> '';
CREATE INDEX outbox_actions_order ON outbox_actions (shop_id, kind, (payload ->> 'order_id'));
CREATE INDEX outbox_actions_payload_trgm ON outbox_actions USING gin ((payload::text) gin_trgm_ops);
CREATE INDEX outbox_actions_error_trgm ON outbox_actions USING gin (last_error gin_trgm_ops);

-- Wake the relays when actions are written (one notification per statement;
-- operator retries notify explicitly).
-- +goose StatementBegin
CREATE FUNCTION outbox_actions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('peakdesk_outbox', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER outbox_actions_inserted AFTER INSERT ON outbox_actions
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_actions_notify();

-- One row per attempt, opened when a relay claims the action and closed with
-- its outcome; an attempt whose relay vanished is closed as 'abandoned' by
-- the relay that re-claims the action.
CREATE TABLE outbox_attempts (
    action_id        bigint NOT NULL REFERENCES outbox_actions (id),
    n                integer NOT NULL CHECK (n > 0),
    relay            text NOT NULL,
    idempotency_key  text NOT NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    outcome          text NOT NULL DEFAULT ''
                     CHECK (outcome IN ('', 'succeeded', 'failed', 'rejected', 'aborted', 'abandoned')),
    http_status      integer,
    error            text NOT NULL DEFAULT '',
    response_excerpt text NOT NULL DEFAULT '',
    PRIMARY KEY (action_id, n)
);

-- Who did what, as an operator. scope is the operator's shop claim ('*' for
-- platform operators); shop is the shop whose data was touched ('' when the
-- operation spanned shops); target names the object (e.g. 'action:42').
CREATE TABLE operator_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor   text NOT NULL,
    scope   text NOT NULL,
    shop    text NOT NULL DEFAULT '',
    action  text NOT NULL,
    target  text NOT NULL DEFAULT '',
    details jsonb NOT NULL DEFAULT '{}',
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operator_audit_scope ON operator_audit (scope, id);
CREATE INDEX operator_audit_shop ON operator_audit (shop, id);

-- +goose Down
DROP TABLE operator_audit;
DROP TABLE outbox_attempts;
DROP TRIGGER outbox_actions_inserted ON outbox_actions;
DROP FUNCTION outbox_actions_notify();
DROP TABLE outbox_actions;
DROP TABLE shop_api_settings;
