-- +goose Up
-- The operator console (docs/operations.md): operators who log in, their
-- server-side sessions, the samples the console takes for its charts, and
-- the indexes its list and search pages need at a million rows.

-- An operator logs in with e-mail and password (argon2id, PHC string with
-- its parameters). shop_id NULL is a platform operator who sees every shop;
-- a shop id confines the operator to that shop.
CREATE TABLE operators (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'agent', 'admin')),
    shop_id       text REFERENCES shops (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    disabled_at   timestamptz,
    CONSTRAINT operators_email UNIQUE (email)
);

-- Server-side sessions (github.com/alexedwards/scs/pgxstore's schema).
CREATE TABLE sessions (
    token  text PRIMARY KEY,
    data   bytea NOT NULL,
    expiry timestamptz NOT NULL
);
CREATE INDEX sessions_expiry_idx ON sessions (expiry);

-- One row per sampling interval, written by whichever console process gets
-- there first (the primary key is the interval's start), pruned after 48 h.
-- The columns are what the charts draw; data is the whole sample.
CREATE TABLE console_samples (
    at              timestamptz PRIMARY KEY,
    backlog_p0      double precision NOT NULL DEFAULT 0,
    backlog_p1      double precision NOT NULL DEFAULT 0,
    backlog_p2      double precision NOT NULL DEFAULT 0,
    inflight        double precision NOT NULL DEFAULT 0,
    concurrency     double precision NOT NULL DEFAULT 0,
    answers_per_s   double precision NOT NULL DEFAULT 0,
    p99_p0          double precision NOT NULL DEFAULT 0,
    p99_p1          double precision NOT NULL DEFAULT 0,
    p99_p2          double precision NOT NULL DEFAULT 0,
    llm_429_per_s   double precision NOT NULL DEFAULT 0,
    fallbacks_per_s double precision NOT NULL DEFAULT 0,
    outbox_due      double precision NOT NULL DEFAULT 0,
    outbox_dead     double precision NOT NULL DEFAULT 0,
    dlq             double precision NOT NULL DEFAULT 0,
    data            jsonb NOT NULL DEFAULT '{}'
);

-- Outbox filters by shop and state (and kind), newest first.
CREATE INDEX outbox_actions_shop_state ON outbox_actions (shop_id, state, kind, id);
-- The time range filter (created_at never changes: no cost to HOT updates).
CREATE INDEX outbox_actions_created ON outbox_actions (created_at);
-- Conversations by order number across shops (platform operators).
CREATE INDEX outbox_actions_order_id ON outbox_actions ((payload ->> 'order_id'))
    WHERE (payload ->> 'order_id') IS NOT NULL;
-- Conversations by customer id across shops.
CREATE INDEX conversations_user ON conversations (user_id);
-- Dead letters by shop and state.
CREATE INDEX dlq_entries_shop_state ON dlq_entries (shop_id, state, id);
-- LLM spend today per shop: an index-only scan over today's priced replies.
CREATE INDEX replies_spend ON replies (created_at) INCLUDE (shop_id, cost_micro_usd)
    WHERE cost_micro_usd > 0;

-- +goose Down
DROP INDEX replies_spend;
DROP INDEX dlq_entries_shop_state;
DROP INDEX conversations_user;
DROP INDEX outbox_actions_order_id;
DROP INDEX outbox_actions_created;
DROP INDEX outbox_actions_shop_state;
DROP TABLE console_samples;
DROP TABLE sessions;
DROP TABLE operators;
