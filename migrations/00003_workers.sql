-- +goose Up
-- Conversation turns (docs/architecture.md): one worker at a time answers a
-- conversation. The turn is a lease on the conversation row: turn_owner is a
-- random token of the holder, turn_until its expiry (renewed with the
-- JetStream heartbeat), so a crashed holder's turn passes on by itself.
-- next_turn_at delays the retry of a turn that failed.
ALTER TABLE conversations
    ADD COLUMN turn_owner   text,
    ADD COLUMN turn_until   timestamptz,
    ADD COLUMN next_turn_at timestamptz;

-- 'waiting': stored while another worker held the conversation; its
-- JetStream message was acked and the row is answered in a later turn.
-- attempts counts the turns that tried to answer the message; last_error
-- is why the last one failed (shown in the dead-letter queue).
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('waiting', 'processing', 'answered', 'failed'));
ALTER TABLE messages
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;
-- The unanswered messages, which turns and the sweeper look for; small by
-- construction, whatever the size of the table.
CREATE INDEX messages_unanswered ON messages (conversation_id, accepted_at, id)
    WHERE reply_id IS NULL AND status IN ('waiting', 'processing');

-- A reply of a turn that no JetStream message stands behind (queued
-- messages answered together) is published by the sweeper if its worker died
-- between commit and publish.
ALTER TABLE replies ADD COLUMN event_pending boolean NOT NULL DEFAULT false;
CREATE INDEX replies_event_pending ON replies (created_at) WHERE event_pending;

-- Dead letters: a message that used up its JetStream deliveries is copied to
-- the CHAT_DLQ stream (dlq_seq) and listed here for operators.
CREATE TABLE dlq_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shop_id         text NOT NULL REFERENCES shops (id),
    message_id      text NOT NULL,
    conversation_id text NOT NULL,
    priority        text NOT NULL,
    subject         text NOT NULL,
    -- in_seq is the message's sequence in CHAT_IN: one entry per death.
    in_seq          bigint NOT NULL,
    dlq_seq         bigint NOT NULL DEFAULT 0,
    deliveries      integer NOT NULL,
    reason          text NOT NULL,
    state           text NOT NULL DEFAULT 'dead' CHECK (state IN ('dead', 'redriven', 'discarded')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    resolved_by     text,
    UNIQUE (in_seq, message_id)
);
CREATE INDEX dlq_entries_shop ON dlq_entries (shop_id, id);
CREATE INDEX dlq_entries_state ON dlq_entries (state, id);

-- +goose Down
DROP TABLE dlq_entries;
DROP INDEX replies_event_pending;
ALTER TABLE replies DROP COLUMN event_pending;
DROP INDEX messages_unanswered;
ALTER TABLE messages DROP COLUMN attempts, DROP COLUMN last_error;
UPDATE messages SET status = 'processing' WHERE status = 'waiting';
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('processing', 'answered', 'failed'));
ALTER TABLE conversations DROP COLUMN turn_owner, DROP COLUMN turn_until, DROP COLUMN next_turn_at;
