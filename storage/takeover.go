package storage

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// Human takeover (docs/architecture.md): the conversation's state says who
// answers, the bot or a human agent. Every change of state happens in a
// transaction that holds the conversation row (an UPDATE or SELECT … FOR
// UPDATE), the same lock ClaimMessage's upsert of the row takes, so state
// changes, stored messages and bot turns are serialised per conversation:
//
//   - a handoff moves every unanswered message of the bot (waiting, or
//     processing in a turn) to status human, and a message stored while a
//     human owns the conversation is stored as human. So while a human
//     owns it, no message is waiting for the bot, and no bot turn can take
//     one (turns take waiting messages only).
//   - a bot turn's SaveTurn checks, in its transaction, that the bot still
//     has the conversation (ErrHumanOwned otherwise: nothing is stored), so
//     an answer composed while a human took over is never sent.
//   - resolving or handing back gives the messages no agent answered back
//     to the bot (status waiting), which answers them in its next turn.
//
// Each change writes its desk webhooks (conversation.handoff, .assigned,
// .resolved, .handback, message.created) in the same transaction, for
// shops with a webhook URL, and a move between the bot and a human
// notifies HumanOwnedChannel (storage/shed.go) for the shedding edges.

// ErrHumanOwned is returned by SaveTurn when a human agent took the
// conversation while the bot composed its answer: nothing was stored, and
// the turn's messages wait for the agent.
var ErrHumanOwned = errors.New("storage: a human agent owns the conversation")

// ErrTakeoverConflict is returned (wrapped, with the reason in its message)
// when a conversation's takeover state does not allow what an agent asked:
// a claim of a conversation another agent holds, a reply to one the agent
// does not hold. It is a conflict peakdesk.Error.
var ErrTakeoverConflict = &peakdesk.Error{Code: peakdesk.EConflict, Message: "conflict"}

func takeoverConflict(format string, args ...any) error {
	return &codedError{sentinel: ErrTakeoverConflict, err: peakdesk.Errorf(peakdesk.EConflict, format, args...)}
}

// deskEventMaxAttempts is the attempt budget of a desk webhook, as
// outbox.DefaultMaxAttempts for reply webhooks.
const deskEventMaxAttempts = 25

// deskColumns are a conversation's takeover columns, for scanDesk.
const deskColumns = `id, shop_id, user_id, state, agent, handoff_reason, waiting_priority,
	waiting_since, assigned_at, resolved_at, desk_seq`

// deskRow is a conversation's takeover state and its event counter.
type deskRow struct {
	peakdesk.DeskConversation
	seq int64
}

// scanDesk scans deskColumns, then into extra the columns that follow.
func scanDesk(row pgx.Row, extra ...any) (*deskRow, error) {
	var d deskRow
	var state, prio string
	var since, assigned, resolved *time.Time
	err := row.Scan(append([]any{&d.ConversationID, &d.ShopID, &d.UserID, &state, &d.Agent, &d.Reason, &prio,
		&since, &assigned, &resolved, &d.seq}, extra...)...)
	d.State, d.Priority = peakdesk.ConversationState(state), peakdesk.Priority(prio)
	for _, t := range []struct {
		dst *time.Time
		src *time.Time
	}{{&d.WaitingSince, since}, {&d.AssignedAt, assigned}, {&d.ResolvedAt, resolved}} {
		if t.src != nil {
			*t.dst = *t.src
		}
	}
	return &d, err
}

// HandOff says why a conversation goes to a human, and how urgent it is.
type HandOff struct {
	// Reason is one of peakdesk's Handoff* reasons.
	Reason string
	// Priority is the urgency of what the customer waits with (default p1);
	// pending messages of a higher priority raise it.
	Priority peakdesk.Priority
	// Announce names messages agents must hear of besides those pending for
	// the bot (the message a dead letter gave up on).
	Announce []string
}

// handOff moves conversation conv of shop to waiting_human in tx, if the bot
// has it (bot or resolved), and reports whether it did; a conversation a
// human owns already stays as it is. The bot's unanswered messages become
// the agent's, and the desk webhooks are written.
func handOff(ctx context.Context, tx pgx.Tx, shop, conv string, h HandOff) (bool, error) {
	d, err := scanDesk(tx.QueryRow(ctx, `UPDATE conversations SET state = 'waiting_human', agent = '',
			handoff_reason = $3, waiting_priority = $4, waiting_since = now(), wait_noticed_at = NULL,
			desk_seq = desk_seq + 1, updated_at = now()
		WHERE id = $1 AND shop_id = $2 AND state IN ('bot', 'resolved')
		RETURNING `+deskColumns, conv, shop, h.Reason, string(cmp.Or(h.Priority, peakdesk.P1))))
	switch {
	case noRows(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("storage: hand off: %w", err)
	}
	if err := notifyHumanOwned(ctx, tx, shop, conv, true); err != nil {
		return false, fmt.Errorf("storage: hand off: %w", err)
	}
	msgs, err := toHuman(ctx, tx, d, h.Announce)
	if err != nil {
		return false, fmt.Errorf("storage: hand off: %w", err)
	}
	// The customer waits with the most urgent of what is pending.
	for _, m := range msgs {
		if m.Priority.Rank() < d.Priority.Rank() {
			d.Priority = m.Priority
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE conversations SET waiting_priority = $3 WHERE id = $1 AND shop_id = $2
		AND waiting_priority > $3`, conv, shop, string(d.Priority)); err != nil {
		return false, fmt.Errorf("storage: hand off: %w", err)
	}
	if err := writeDeskEvents(ctx, tx, d, peakdesk.EventConversationHandoff, msgs); err != nil {
		return false, fmt.Errorf("storage: hand off: %w", err)
	}
	return true, nil
}

// toHuman gives the bot's unanswered messages of d to a human (status
// human) and returns them with the messages named in announce, oldest
// first.
func toHuman(ctx context.Context, tx pgx.Tx, d *deskRow, announce []string) ([]peakdesk.MessageState, error) {
	rows, err := tx.Query(ctx, `WITH moved AS (
			UPDATE messages SET status = 'human'
			WHERE conversation_id = $1 AND shop_id = $2 AND reply_id IS NULL AND status IN ('waiting', 'processing')
			RETURNING id, priority, text, accepted_at)
		SELECT id, priority, text, accepted_at FROM moved
		UNION
		SELECT id, priority, text, accepted_at FROM messages
		WHERE id = ANY($3) AND conversation_id = $1 AND shop_id = $2 AND reply_id IS NULL
		ORDER BY accepted_at, id`, d.ConversationID, d.ShopID, announce)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (peakdesk.MessageState, error) {
		m := peakdesk.MessageState{ConversationID: d.ConversationID, Status: peakdesk.StatusQueued}
		var prio string
		err := row.Scan(&m.ID, &prio, &m.Text, &m.CreatedAt)
		m.Priority = peakdesk.Priority(prio)
		return m, err
	})
}

// MarkHandoff hands conversation conv of shop to a human in tx, the
// transaction of the reply that hands it over (a bot turn's answer says so
// with TurnReply.Handoff instead).
func MarkHandoff(ctx context.Context, tx pgx.Tx, shop, conv string) error {
	_, err := handOff(ctx, tx, shop, conv, HandOff{Reason: peakdesk.HandoffTool})
	return err
}

// deskEventKey derives a desk event's id (and its webhook's idempotency
// key) from what identifies it, so a repeated transaction writes one.
func deskEventKey(typ, shop string, parts ...string) string {
	h := sha256.Sum256([]byte("desk\x00" + typ + "\x00" + shop + "\x00" + strings.Join(parts, "\x00")))
	return "pd_whk_" + hex.EncodeToString(h[:20])
}

// writeDeskEvents writes, for a shop with a webhook URL, the webhook of
// conversation event typ ("" for none) on d and a message.created webhook
// for each of msgs.
func writeDeskEvents(ctx context.Context, tx pgx.Tx, d *deskRow, typ string, msgs []peakdesk.MessageState) error {
	var hooked bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shop_api_settings WHERE shop_id = $1 AND webhook_url <> '')`,
		d.ShopID).Scan(&hooked); err != nil || !hooked {
		return err
	}
	seq := strconv.FormatInt(d.seq, 10)
	now := time.Now().UTC()
	var events []peakdesk.DeskEvent
	if typ != "" {
		conv := d.DeskConversation
		events = append(events, peakdesk.DeskEvent{EventID: deskEventKey(typ, d.ShopID, d.ConversationID, seq),
			Type: typ, Shop: d.ShopID, ConversationID: d.ConversationID, Conversation: &conv, CreatedAt: now})
	}
	for i := range msgs {
		events = append(events, peakdesk.DeskEvent{
			EventID: deskEventKey(peakdesk.EventMessageCreated, d.ShopID, msgs[i].ID, seq),
			Type:    peakdesk.EventMessageCreated, Shop: d.ShopID, ConversationID: d.ConversationID,
			Message: &msgs[i], CreatedAt: now})
	}
	actions := make([]peakdesk.Action, len(events))
	for i := range events {
		payload, err := json.Marshal(&events[i])
		if err != nil {
			return err
		}
		actions[i] = peakdesk.Action{ShopID: d.ShopID, ConversationID: d.ConversationID,
			Kind: peakdesk.ActionWebhookDeliver, Payload: payload, IdempotencyKey: events[i].EventID,
			MaxAttempts: deskEventMaxAttempts}
	}
	_, err := InsertActions(ctx, tx, actions)
	return err
}

// AnnounceHumanMessage tells agents of message m, stored while a human owns
// its conversation (ClaimMessage's Claim.Human): its message.created
// webhook, and the conversation's waiting priority raised to m's. It is
// idempotent, and does nothing once the message is answered or the bot has
// the conversation again.
func (db *DB) AnnounceHumanMessage(ctx context.Context, m *peakdesk.Message) error {
	if err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error { return announceHuman(ctx, tx, m) }); err != nil {
		return fmt.Errorf("storage: announce human message: %w", err)
	}
	return nil
}

func announceHuman(ctx context.Context, tx pgx.Tx, m *peakdesk.Message) error {
	d, err := scanDesk(tx.QueryRow(ctx, `UPDATE conversations SET updated_at = now(),
			waiting_priority = CASE WHEN state = 'waiting_human' THEN least(waiting_priority, $3)
				ELSE waiting_priority END
		WHERE id = $1 AND shop_id = $2 AND state IN ('waiting_human', 'assigned')
		RETURNING `+deskColumns, m.ConversationID, m.ShopID, string(m.Priority)))
	if noRows(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var pending bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 AND shop_id = $2
		AND status = 'human' AND reply_id IS NULL)`, m.ID, m.ShopID).Scan(&pending); err != nil || !pending {
		return err
	}
	return writeDeskEvents(ctx, tx, d, "", []peakdesk.MessageState{{ID: m.ID, ConversationID: m.ConversationID,
		Priority: m.Priority, Status: peakdesk.StatusQueued, Text: m.Text, CreatedAt: m.AcceptedAt}})
}

// storeHumanMessage stores m, which came while a human owns its
// conversation (locked by tx), for the agent and announces it.
func storeHumanMessage(ctx context.Context, tx pgx.Tx, m *peakdesk.Message) error {
	var clientMsgID *string
	if m.ClientMsgID != "" {
		clientMsgID = &m.ClientMsgID
	}
	var metadata []byte
	if len(m.Metadata) > 0 {
		metadata = m.Metadata
	}
	if _, err := tx.Exec(ctx, `INSERT INTO messages (id, shop_id, conversation_id, user_id, text, channel, priority,
			client_msg_id, metadata, status, accepted_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'human', $10)`,
		m.ID, m.ShopID, m.ConversationID, m.UserID, m.Text, m.Channel, string(m.Priority),
		clientMsgID, metadata, m.AcceptedAt); err != nil {
		return err
	}
	return announceHuman(ctx, tx, m)
}

// DeskActor is who changes a conversation's takeover state: for the checks
// and the audit log.
type DeskActor struct {
	// Agent identifies the agent: a console operator's e-mail, an API
	// token's subject.
	Agent string
	// Scope is the agent's shop, or AllShops.
	Scope string
	// Supervisor may resolve or hand back a conversation another agent
	// holds (a console admin).
	Supervisor bool
	// Via names where the agent works ("console", "api"), for the audit log.
	Via string
}

// lockDesk returns conversation conv of scope with its row locked for tx,
// or ErrNotFound.
func lockDesk(ctx context.Context, tx pgx.Tx, scope, conv string) (*deskRow, error) {
	d, err := scanDesk(tx.QueryRow(ctx, `SELECT `+deskColumns+` FROM conversations
		WHERE id = $1 AND ($2 = '*' OR shop_id = $2) FOR UPDATE`, conv, scope))
	if noRows(err) {
		return nil, notFound("conversation")
	}
	return d, err
}

func auditDesk(ctx context.Context, tx pgx.Tx, a DeskActor, d *deskRow, action string, details map[string]any) error {
	details["via"] = a.Via
	b, _ := json.Marshal(details)
	return InsertAudit(ctx, tx, &AuditEntry{Actor: a.Agent, Scope: a.Scope, Shop: d.ShopID, Action: action,
		Target: "conversation:" + d.ConversationID, Details: b})
}

// deskTx runs fn in a transaction with conversation conv of a's scope
// locked, and returns the conversation as fn leaves it.
func (db *DB) deskTx(ctx context.Context, a DeskActor, conv, what string,
	fn func(tx pgx.Tx, d *deskRow) (*deskRow, error)) (*peakdesk.DeskConversation, error) {
	if a.Agent == "" || a.Scope == "" {
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "not an agent")
	}
	var out *deskRow
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		d, err := lockDesk(ctx, tx, a.Scope, conv)
		if err != nil {
			return err
		}
		out, err = fn(tx, d)
		return err
	})
	if err != nil {
		if peakdesk.ErrorCode(err) != peakdesk.EInternal {
			return nil, err
		}
		return nil, fmt.Errorf("storage: %s: %w", what, err)
	}
	return &out.DeskConversation, nil
}

// ClaimForAgent lets agent a take conversation conv: one agent at a
// time. A conversation waiting for an agent is assigned to a, and waited
// is how long it waited; one the bot has is taken over (its unanswered
// messages become the agent's); a's own is returned as it is. One another
// agent holds is refused with ErrTakeoverConflict, naming the holder.
func (db *DB) ClaimForAgent(ctx context.Context, a DeskActor, conv string) (d *peakdesk.DeskConversation, waited time.Duration, err error) {
	d, err = db.deskTx(ctx, a, conv, "claim conversation", func(tx pgx.Tx, cur *deskRow) (*deskRow, error) {
		switch {
		case cur.State == peakdesk.StateAssigned && cur.Agent == a.Agent:
			return cur, nil
		case cur.State == peakdesk.StateAssigned:
			return nil, takeoverConflict("the conversation is assigned to %s", cur.Agent)
		}
		from := cur.State
		next, err := scanDesk(tx.QueryRow(ctx, `UPDATE conversations SET state = 'assigned', agent = $2,
				assigned_at = now(), desk_seq = desk_seq + 1, updated_at = now(),
				waiting_since = CASE WHEN state = 'waiting_human' THEN waiting_since ELSE now() END,
				handoff_reason = CASE WHEN state = 'waiting_human' THEN handoff_reason ELSE $3 END,
				waiting_priority = CASE WHEN state = 'waiting_human' THEN waiting_priority ELSE 'p2' END
			WHERE id = $1 RETURNING `+deskColumns, cur.ConversationID, a.Agent, peakdesk.HandoffAgentTakeover))
		if err != nil {
			return nil, err
		}
		var msgs []peakdesk.MessageState
		if from.HumanOwned() {
			waited = next.AssignedAt.Sub(next.WaitingSince)
		} else if msgs, err = toHuman(ctx, tx, next, nil); err != nil {
			return nil, err
		} else if err := notifyHumanOwned(ctx, tx, next.ShopID, next.ConversationID, true); err != nil {
			return nil, err
		}
		if err := writeDeskEvents(ctx, tx, next, peakdesk.EventConversationAssigned, msgs); err != nil {
			return nil, err
		}
		return next, auditDesk(ctx, tx, a, next, "conversation.claim", map[string]any{"from": from})
	})
	return d, waited, err
}

// AgentReply stores r, agent a's reply on conversation conv, with source
// agent: it answers every message of the conversation no one answered yet
// (r.MessageIDs is filled in), and webhook builds its reply webhook (nil:
// none), in one transaction. The reply is marked event pending until the
// caller publishes its event (EventPublished). Only the agent the
// conversation is assigned to may reply (ErrTakeoverConflict). r.ID is the
// caller's: a repeat of a stored id returns the stored reply with stored
// false.
func (db *DB) AgentReply(ctx context.Context, a DeskActor, conv string, r *peakdesk.Reply,
	webhook func(*peakdesk.Reply) (peakdesk.Action, error)) (stored bool, err error) {
	_, err = db.deskTx(ctx, a, conv, "agent reply", func(tx pgx.Tx, d *deskRow) (*deskRow, error) {
		prev, err := scanReply(tx.QueryRow(ctx, `SELECT `+replyColumns+` FROM replies r
			WHERE r.id = $1 AND r.shop_id = $2 AND r.conversation_id = $3`, r.ID, d.ShopID, d.ConversationID))
		switch {
		case err == nil:
			*r = *prev // a repeat
			return d, nil
		case !noRows(err):
			return nil, err
		case d.State == peakdesk.StateWaitingHuman:
			return nil, takeoverConflict("claim the conversation before replying")
		case d.State != peakdesk.StateAssigned:
			return nil, takeoverConflict("the conversation is not with an agent (%s)", d.State)
		case d.Agent != a.Agent:
			return nil, takeoverConflict("the conversation is assigned to %s", d.Agent)
		}
		r.ShopID, r.ConversationID, r.Source = d.ShopID, d.ConversationID, peakdesk.SourceAgent
		r.UserID = d.UserID // its event goes on the customer's subject
		if err := tx.QueryRow(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source, agent, event_pending)
			VALUES ($1, $2, $3, $4, $5, $6, true) RETURNING created_at`,
			r.ID, r.ShopID, r.ConversationID, r.Text, r.Source, r.Agent).Scan(&r.CreatedAt); err != nil {
			return nil, err
		}
		// A dead-lettered message of the conversation was never answered
		// either: the agent's reply is its answer.
		rows, err := tx.Query(ctx, `WITH answered AS (
				UPDATE messages SET status = 'answered', reply_id = $1, answered_at = now(), last_error = NULL
				WHERE conversation_id = $2 AND shop_id = $3 AND reply_id IS NULL AND status IN ('human', 'failed')
				RETURNING id, accepted_at)
			SELECT id FROM answered ORDER BY accepted_at, id`, r.ID, r.ConversationID, r.ShopID)
		if err != nil {
			return nil, err
		}
		if r.MessageIDs, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return nil, err
		}
		if r.MessageIDs == nil {
			r.MessageIDs = []string{}
		}
		if _, err := tx.Exec(ctx, `UPDATE conversations SET updated_at = now() WHERE id = $1`, r.ConversationID); err != nil {
			return nil, err
		}
		stored = true
		if webhook == nil {
			return d, nil
		}
		wh, err := webhook(r)
		if err != nil {
			return nil, err
		}
		_, err = InsertReplyWebhook(ctx, tx, wh)
		return d, err
	})
	return stored, err
}

// ResolveConversation marks conversation conv resolved by agent a: the
// agent who holds it, a supervisor, or any agent while it still waits. The
// messages no agent answered go back to the bot, which answers them. A
// conversation the bot has is returned as it is.
func (db *DB) ResolveConversation(ctx context.Context, a DeskActor, conv string) (*peakdesk.DeskConversation, error) {
	return db.release(ctx, a, conv, peakdesk.StateResolved)
}

// HandBack gives conversation conv back to the bot, on agent a's word (who
// may, as for ResolveConversation): the bot answers the messages no agent
// answered and every later one.
func (db *DB) HandBack(ctx context.Context, a DeskActor, conv string) (*peakdesk.DeskConversation, error) {
	return db.release(ctx, a, conv, peakdesk.StateBot)
}

func (db *DB) release(ctx context.Context, a DeskActor, conv string, to peakdesk.ConversationState) (*peakdesk.DeskConversation, error) {
	event, action := peakdesk.EventConversationResolved, "conversation.resolve"
	if to == peakdesk.StateBot {
		event, action = peakdesk.EventConversationHandback, "conversation.handback"
	}
	return db.deskTx(ctx, a, conv, action, func(tx pgx.Tx, cur *deskRow) (*deskRow, error) {
		switch {
		case !cur.State.HumanOwned():
			return cur, nil // the bot has it already
		case cur.State == peakdesk.StateAssigned && cur.Agent != a.Agent && !a.Supervisor:
			return nil, takeoverConflict("the conversation is assigned to %s", cur.Agent)
		}
		next, err := scanDesk(tx.QueryRow(ctx, `UPDATE conversations SET state = $2, desk_seq = desk_seq + 1,
				updated_at = now(), next_turn_at = NULL,
				agent = CASE WHEN $2 = 'resolved' THEN $3 ELSE '' END,
				resolved_at = CASE WHEN $2 = 'resolved' THEN now() ELSE resolved_at END
			WHERE id = $1 RETURNING `+deskColumns, cur.ConversationID, string(to), a.Agent))
		if err != nil {
			return nil, err
		}
		tag, err := tx.Exec(ctx, `UPDATE messages SET status = 'waiting'
			WHERE conversation_id = $1 AND shop_id = $2 AND reply_id IS NULL AND status = 'human'`,
			next.ConversationID, next.ShopID)
		if err != nil {
			return nil, err
		}
		if err := notifyHumanOwned(ctx, tx, next.ShopID, next.ConversationID, false); err != nil {
			return nil, err
		}
		if err := writeDeskEvents(ctx, tx, next, event, nil); err != nil {
			return nil, err
		}
		return next, auditDesk(ctx, tx, a, next, action, map[string]any{"from": cur.State,
			"unanswered_to_bot": tag.RowsAffected()})
	})
}

// InboxEntry is a conversation in an agent's inbox.
type InboxEntry struct {
	peakdesk.DeskConversation
	// Pending counts the customer's messages no one answered yet.
	Pending int
	// LastText is the customer's latest message, LastAt when it came.
	LastText string
	LastAt   time.Time
}

// Inbox is what an agent works on: the conversations waiting for an agent,
// most urgent and longest waiting first, and those assigned to the agent.
type Inbox struct {
	Waiting []InboxEntry
	// WaitingTotal counts every waiting conversation of the scope, beyond
	// the limit.
	WaitingTotal int
	Mine         []InboxEntry
}

const inboxColumns = deskColumns + `,
	(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id AND m.reply_id IS NULL AND m.status = 'human'),
	coalesce(l.text, ''), l.accepted_at`

// inboxLast joins each conversation's latest customer message.
const inboxLast = ` LEFT JOIN LATERAL (SELECT m.text, m.accepted_at FROM messages m
	WHERE m.conversation_id = c.id ORDER BY m.accepted_at DESC, m.id DESC LIMIT 1) l ON true`

// Inbox returns the inbox of agent in scope (a shop, or AllShops), up to
// limit conversations of each kind.
func (db *DB) Inbox(ctx context.Context, scope, agent string, limit int) (*Inbox, error) {
	// One statement per scope kind, so each uses its own partial index.
	waiting := `SELECT ` + inboxColumns + ` FROM conversations c` + inboxLast + `
		WHERE c.state = 'waiting_human' AND c.shop_id = $1
		ORDER BY c.waiting_priority, c.waiting_since, c.id LIMIT $2`
	count := `SELECT count(*) FROM conversations WHERE state = 'waiting_human' AND shop_id = $1`
	if scope == AllShops {
		waiting = strings.Replace(waiting, "c.shop_id = $1", "$1 = '*'", 1)
		count = strings.Replace(count, "shop_id = $1", "$1 = '*'", 1)
	}
	in := &Inbox{}
	var err error
	if in.Waiting, err = db.inboxRows(ctx, waiting, scope, limit); err != nil {
		return nil, err
	}
	if err := db.pool.QueryRow(ctx, count, scope).Scan(&in.WaitingTotal); err != nil {
		return nil, fmt.Errorf("storage: inbox: %w", err)
	}
	in.Mine, err = db.inboxRows(ctx, `SELECT `+inboxColumns+` FROM conversations c`+inboxLast+`
		WHERE c.state = 'assigned' AND c.agent = $3 AND ($1 = '*' OR c.shop_id = $1)
		ORDER BY c.assigned_at, c.id LIMIT $2`, scope, limit, agent)
	return in, err
}

func (db *DB) inboxRows(ctx context.Context, sql string, args ...any) ([]InboxEntry, error) {
	rows, err := db.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("storage: inbox: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (InboxEntry, error) {
		var e InboxEntry
		var state, prio string
		var since, assigned, resolved, last *time.Time
		var seq int64
		err := row.Scan(&e.ConversationID, &e.ShopID, &e.UserID, &state, &e.Agent, &e.Reason, &prio,
			&since, &assigned, &resolved, &seq, &e.Pending, &e.LastText, &last)
		e.State, e.Priority = peakdesk.ConversationState(state), peakdesk.Priority(prio)
		for _, t := range []struct {
			dst *time.Time
			src *time.Time
		}{{&e.WaitingSince, since}, {&e.AssignedAt, assigned}, {&e.ResolvedAt, resolved}, {&e.LastAt, last}} {
			if t.src != nil {
				*t.dst = *t.src
			}
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: inbox: %w", err)
	}
	return entries, nil
}

// DeskConversation returns conversation conv of scope's takeover state, or
// ErrNotFound.
func (db *DB) DeskConversation(ctx context.Context, scope, conv string) (*peakdesk.DeskConversation, error) {
	d, err := scanDesk(db.pool.QueryRow(ctx, `SELECT `+deskColumns+` FROM conversations
		WHERE id = $1 AND ($2 = '*' OR shop_id = $2)`, conv, scope))
	switch {
	case noRows(err):
		return nil, notFound("conversation")
	case err != nil:
		return nil, fmt.Errorf("storage: desk conversation: %w", err)
	}
	return &d.DeskConversation, nil
}

// CountWaiting returns how many conversations wait for an agent.
func (db *DB) CountWaiting(ctx context.Context) (int64, error) {
	var n int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM conversations WHERE state = 'waiting_human'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("storage: count waiting: %w", err)
	}
	return n, nil
}

// WaitFacts are what a customer waiting too long is told about.
type WaitFacts struct {
	ShopID, ConversationID string
	// LastText is the customer's latest message (for their language).
	LastText string
	// Ahead counts the shop's conversations an agent takes before this
	// one.
	Ahead int
	// RecentClaims counts the shop's conversations agents claimed in the
	// last ClaimWindow.
	RecentClaims int
}

// ClaimWindow is the time over which WaitFacts.RecentClaims are counted.
const ClaimWindow = 30 * time.Minute

// NoticeWaits finds up to limit conversations that have waited for an
// agent longer than their shop's handoff_sla and whose customer was not
// told yet in this waiting period, and posts each one notice: a reply with
// source handoff and the text notice builds, answering no message, with
// its webhook (built by webhook; nil: none), in one transaction. Processes
// running it at once skip each other's rows, and a conversation is noticed
// once per waiting period. The replies are returned marked event pending
// (the caller publishes their events).
func (db *DB) NoticeWaits(ctx context.Context, limit int, notice func(WaitFacts) string,
	webhook func(*peakdesk.Reply) (peakdesk.Action, error)) ([]*peakdesk.Reply, error) {
	var out []*peakdesk.Reply
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		out = out[:0]
		rows, err := tx.Query(ctx, `SELECT c.id, c.shop_id, c.desk_seq, c.waiting_priority, c.waiting_since,
				coalesce((SELECT m.text FROM messages m WHERE m.conversation_id = c.id
					ORDER BY m.accepted_at DESC, m.id DESC LIMIT 1), '')
			FROM conversations c JOIN shops s ON s.id = c.shop_id
			WHERE c.state = 'waiting_human' AND c.wait_noticed_at IS NULL
				AND c.waiting_since < now() - s.handoff_sla
			ORDER BY c.waiting_since LIMIT $1
			FOR UPDATE OF c SKIP LOCKED`, limit)
		if err != nil {
			return err
		}
		type due struct {
			WaitFacts
			seq   int64
			prio  string
			since time.Time
		}
		dues, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (due, error) {
			var d due
			err := row.Scan(&d.ConversationID, &d.ShopID, &d.seq, &d.prio, &d.since, &d.LastText)
			return d, err
		})
		if err != nil {
			return err
		}
		for _, d := range dues {
			if err := tx.QueryRow(ctx, `SELECT
					(SELECT count(*) FROM conversations WHERE state = 'waiting_human' AND shop_id = $1
						AND (waiting_priority, waiting_since) < ($2, $3)),
					(SELECT count(*) FROM conversations WHERE shop_id = $1 AND assigned_at > now() - $4::interval)`,
				d.ShopID, d.prio, d.since, ClaimWindow).Scan(&d.Ahead, &d.RecentClaims); err != nil {
				return err
			}
			h := sha256.Sum256([]byte("wait-notice:" + d.ConversationID + ":" + strconv.FormatInt(d.seq, 10)))
			r := &peakdesk.Reply{ID: hex.EncodeToString(h[:16]), ShopID: d.ShopID, ConversationID: d.ConversationID,
				MessageIDs: []string{}, Text: notice(d.WaitFacts), Source: peakdesk.SourceHandoff}
			if err := tx.QueryRow(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source, event_pending)
				VALUES ($1, $2, $3, $4, $5, true)
				RETURNING created_at, (SELECT user_id FROM conversations WHERE id = $3 AND shop_id = $2)`,
				r.ID, r.ShopID, r.ConversationID, r.Text, r.Source).Scan(&r.CreatedAt, &r.UserID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE conversations SET wait_noticed_at = now() WHERE id = $1`,
				d.ConversationID); err != nil {
				return err
			}
			if webhook != nil {
				wh, err := webhook(r)
				if err != nil {
					return err
				}
				if _, err := InsertReplyWebhook(ctx, tx, wh); err != nil {
					return err
				}
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: notice waits: %w", err)
	}
	return out, nil
}

// TakeoverSettings are a shop's human-takeover settings.
type TakeoverSettings struct {
	// SLA is how long a customer waits for an agent before being told the
	// expected wait. Default 10 min.
	SLA time.Duration
	// Keywords are the shop's own words with which a customer asks for a
	// human, besides the built-in ones.
	Keywords []string
}

// DefaultHandoffSLA is a new shop's handoff_sla.
const DefaultHandoffSLA = 10 * time.Minute

// normalized checks s — an SLA of at least one second, keywords of 1..50
// characters, at most 100 — and returns it with blank and repeated
// keywords dropped.
func (s TakeoverSettings) normalized() (TakeoverSettings, error) {
	if s.SLA < time.Second {
		return s, peakdesk.FieldError("handoff.sla", "handoff.sla must be at least 1s")
	}
	keywords := []string{}
	for _, k := range s.Keywords {
		if k = strings.TrimSpace(k); k == "" {
			continue
		}
		if n := len([]rune(k)); n > 50 {
			return s, peakdesk.FieldError("handoff.keywords", "a handoff keyword must be at most 50 characters")
		}
		if !slices.Contains(keywords, k) {
			keywords = append(keywords, k)
		}
	}
	if len(keywords) > 100 {
		return s, peakdesk.FieldError("handoff.keywords", "at most 100 handoff keywords")
	}
	s.Keywords = keywords
	return s, nil
}

// ShopTakeoverSettings returns shop's takeover settings, or ErrNotFound.
func (db *DB) ShopTakeoverSettings(ctx context.Context, shop string) (*TakeoverSettings, error) {
	var s TakeoverSettings
	var secs float64
	err := db.pool.QueryRow(ctx, `SELECT extract(epoch FROM handoff_sla)::float8, handoff_keywords
		FROM shops WHERE id = $1`, shop).Scan(&secs, &s.Keywords)
	switch {
	case noRows(err):
		return nil, notFound("shop")
	case err != nil:
		return nil, fmt.Errorf("storage: shop takeover settings: %w", err)
	}
	s.SLA = time.Duration(secs * float64(time.Second))
	return &s, nil
}

// SetShopTakeoverSettings sets shop's takeover settings: an SLA of at least
// one second, keywords of 1..50 characters (blank ones dropped, at most 100).
func (db *DB) SetShopTakeoverSettings(ctx context.Context, shop string, s TakeoverSettings) error {
	s, err := s.normalized()
	if err != nil {
		return err
	}
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET handoff_sla = $2::interval, handoff_keywords = $3 WHERE id = $1`,
		shop, s.SLA, s.Keywords)
	switch {
	case err != nil:
		return fmt.Errorf("storage: set shop takeover settings: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}
