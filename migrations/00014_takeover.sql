-- +goose Up
-- Human takeover (docs/architecture.md). A conversation's state says who answers
-- it: the bot, or a human agent (waiting for one, or assigned to one). The
-- state replaces the handoff flag, which becomes a column computed from it
-- (true while a human owns the conversation), so there is one source of
-- truth and every reader of handoff stays right.
ALTER TABLE conversations
    ADD COLUMN state            text NOT NULL DEFAULT 'bot'
        CHECK (state IN ('bot', 'waiting_human', 'assigned', 'resolved')),
    -- Who owns an assigned conversation (console e-mail, API token
    -- subject); after resolve, who resolved it.
    ADD COLUMN agent            text NOT NULL DEFAULT '',
    ADD COLUMN handoff_reason   text NOT NULL DEFAULT '',
    -- The most urgent priority the customer waits with: agents take p0
    -- first (text order is priority order).
    ADD COLUMN waiting_priority text NOT NULL DEFAULT 'p2' CHECK (waiting_priority IN ('p0', 'p1', 'p2')),
    ADD COLUMN waiting_since    timestamptz,
    ADD COLUMN assigned_at      timestamptz,
    ADD COLUMN resolved_at      timestamptz,
    -- Set when the customer was told the expected wait (the shop's
    -- handoff_sla passed unclaimed); once per waiting period.
    ADD COLUMN wait_noticed_at  timestamptz,
    -- Counts the conversation's takeover events; desk webhook event ids
    -- derive from it, so a repeated transaction cannot send one twice.
    ADD COLUMN desk_seq         bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT conversations_assigned_has_agent CHECK (state <> 'assigned' OR agent <> ''),
    ADD CONSTRAINT conversations_human_waits CHECK (state NOT IN ('waiting_human', 'assigned') OR waiting_since IS NOT NULL);

-- Conversations handed off in the last day wait for an agent; older ones
-- (the flag was never cleared) count as resolved, so their customers get
-- the bot again rather than a queue nobody knew about.
UPDATE conversations SET state = 'waiting_human', waiting_since = updated_at, handoff_reason = 'fallback',
    waiting_priority = 'p1'
WHERE handoff AND updated_at > now() - interval '24 hours';
UPDATE conversations SET state = 'resolved', resolved_at = updated_at, handoff_reason = 'fallback'
WHERE handoff AND state = 'bot';
ALTER TABLE conversations DROP COLUMN handoff;
ALTER TABLE conversations
    ADD COLUMN handoff boolean GENERATED ALWAYS AS (state IN ('waiting_human', 'assigned')) STORED;

-- The inbox: waiting conversations by priority and wait, per shop and for
-- platform agents; an agent's own; and recent claims (the expected wait).
CREATE INDEX conversations_waiting ON conversations (shop_id, waiting_priority, waiting_since)
    WHERE state = 'waiting_human';
CREATE INDEX conversations_waiting_all ON conversations (waiting_priority, waiting_since)
    WHERE state = 'waiting_human';
CREATE INDEX conversations_assigned ON conversations (agent, assigned_at) WHERE state = 'assigned';
CREATE INDEX conversations_claims ON conversations (shop_id, assigned_at) WHERE assigned_at IS NOT NULL;

-- 'human': stored while a human owns the conversation (or pending when it
-- was handed over); no bot turn takes it, an agent's reply answers it. The
-- API shows it as queued.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('waiting', 'processing', 'answered', 'failed', 'human'));
CREATE INDEX messages_human ON messages (conversation_id, accepted_at, id)
    WHERE reply_id IS NULL AND status = 'human';

-- An agent's reply: source 'agent', signed with the agent's name.
ALTER TABLE replies DROP CONSTRAINT replies_source_check;
ALTER TABLE replies ADD CONSTRAINT replies_source_check
    CHECK (source IN ('llm', 'llm_secondary', 'faq', 'handoff', 'cache', 'followup', 'agent'));
ALTER TABLE replies ADD COLUMN agent text NOT NULL DEFAULT '';

-- Per shop: how long a customer may wait for an agent before being told
-- the expected wait, and words (besides 人工, 转人工, human, agent) with
-- which a customer asks for a human.
ALTER TABLE shops
    ADD COLUMN handoff_sla      interval NOT NULL DEFAULT interval '10 minutes'
        CHECK (handoff_sla > interval '0'),
    ADD COLUMN handoff_keywords text[] NOT NULL DEFAULT '{}';

-- +goose Down
ALTER TABLE shops DROP COLUMN handoff_sla, DROP COLUMN handoff_keywords;
ALTER TABLE replies DROP COLUMN agent;
UPDATE replies SET source = 'handoff' WHERE source = 'agent';
ALTER TABLE replies DROP CONSTRAINT replies_source_check;
ALTER TABLE replies ADD CONSTRAINT replies_source_check
    CHECK (source IN ('llm', 'llm_secondary', 'faq', 'handoff', 'cache', 'followup'));
DROP INDEX messages_human;
UPDATE messages SET status = 'waiting' WHERE status = 'human';
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('waiting', 'processing', 'answered', 'failed'));
ALTER TABLE conversations DROP COLUMN handoff;
ALTER TABLE conversations ADD COLUMN handoff boolean NOT NULL DEFAULT false;
UPDATE conversations SET handoff = true WHERE state <> 'bot';
ALTER TABLE conversations
    DROP COLUMN state, DROP COLUMN agent, DROP COLUMN handoff_reason, DROP COLUMN waiting_priority,
    DROP COLUMN waiting_since, DROP COLUMN assigned_at, DROP COLUMN resolved_at, DROP COLUMN wait_noticed_at,
    DROP COLUMN desk_seq;
