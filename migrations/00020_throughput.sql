-- Answer throughput (issue 16). NOTIFY takes one lock for the whole
-- database at commit and holds it through the commit's WAL flush, so a
-- NOTIFY in every turn's transaction (the reply webhook's insert fires the
-- outbox trigger) made every turn commit one after another, an fsync each.
-- A transaction that sets peakdesk.defer_outbox_notify = on (the workers'
-- turns) now skips the trigger's notification; its worker wakes the relays
-- itself after commit, a few times a second at most (relays poll anyway).

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_actions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('peakdesk.defer_outbox_notify', true), '') <> 'on' THEN
        PERFORM pg_notify('peakdesk_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_actions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('peakdesk_outbox', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
