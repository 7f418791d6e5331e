-- +goose Up
CREATE TABLE shops (
    id         text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id         text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    shop_id    text NOT NULL REFERENCES shops (id),
    user_id    text NOT NULL,
    -- handoff marks a conversation that waits for a human agent.
    handoff    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_shop_user ON conversations (shop_id, user_id);

-- A reply answers one or more messages of a conversation (messages that
-- queued up while the conversation was busy are answered together), or none
-- (a follow-up pushed later).
CREATE TABLE replies (
    id                text PRIMARY KEY,
    shop_id           text NOT NULL REFERENCES shops (id),
    conversation_id   text NOT NULL REFERENCES conversations (id),
    text              text NOT NULL,
    source            text NOT NULL CHECK (source IN ('llm', 'llm_secondary', 'faq', 'handoff', 'cache')),
    model             text NOT NULL DEFAULT '',
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replies_conversation ON replies (conversation_id, created_at);

-- A message row appears when a worker first takes the message; until then the
-- message lives only in JetStream and reads as "queued".
CREATE TABLE messages (
    id              text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    shop_id         text NOT NULL REFERENCES shops (id),
    conversation_id text NOT NULL REFERENCES conversations (id),
    user_id         text NOT NULL,
    text            text NOT NULL,
    channel         text NOT NULL DEFAULT '',
    priority        text NOT NULL CHECK (priority IN ('p0', 'p1', 'p2')),
    client_msg_id   text,
    metadata        jsonb,
    status          text NOT NULL CHECK (status IN ('processing', 'answered', 'failed')),
    -- One reply per message, by construction: a single column, set once.
    reply_id        text REFERENCES replies (id),
    accepted_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    answered_at     timestamptz,
    CONSTRAINT messages_answered_has_reply CHECK ((status = 'answered') = (reply_id IS NOT NULL))
);
-- Idempotent repeats need no unique key here: the edge derives a repeated
-- message's id from (shop, user, key), so the primary key catches them.
CREATE INDEX messages_shop_client_msg ON messages (shop_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE INDEX messages_conversation ON messages (conversation_id, accepted_at);
CREATE INDEX messages_reply ON messages (reply_id);

-- +goose Down
DROP TABLE messages;
DROP TABLE replies;
DROP TABLE conversations;
DROP TABLE shops;
