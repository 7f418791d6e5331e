package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// ErrAlreadyAnswered is returned by SaveTurn when another reply got to one
// of the messages first; the caller's reply was not stored.
var ErrAlreadyAnswered = errors.New("storage: message already answered")

// ErrForeignConversation is returned by ClaimMessage when the conversation id
// is already held by another shop or user. The message must not be answered.
var ErrForeignConversation = errors.New("storage: conversation belongs to someone else")

// EnsureShop creates shop id if it does not exist, with a webhook secret of
// its own (32 random bytes in hex, sealed).
func (db *DB) EnsureShop(ctx context.Context, id, name string) error {
	webhookSecret, err := db.newWebhookSecret(id)
	if err != nil {
		return fmt.Errorf("storage: ensure shop: %w", err)
	}
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx,
			`INSERT INTO shops (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, id, name); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO shop_api_settings (shop_id, webhook_secret) VALUES ($1, $2)
			ON CONFLICT DO NOTHING`, id, webhookSecret)
		return err
	})
	if err != nil {
		return fmt.Errorf("storage: ensure shop: %w", err)
	}
	return nil
}

// queueMessageInsert queues the upsert of m's conversation (returning its
// shop and user, and whether this inserted it, which the caller scans first) and the insert of m with
// status unless it is stored already (status human while a human agent owns
// the conversation). The message goes in only if the conversation is the
// same shop's and user's.
func queueMessageInsert(b *pgx.Batch, m *peakdesk.Message, status string) {
	var clientMsgID *string
	if m.ClientMsgID != "" {
		clientMsgID = &m.ClientMsgID
	}
	var metadata []byte
	if len(m.Metadata) > 0 {
		metadata = m.Metadata
	}
	b.Queue(`INSERT INTO conversations (id, shop_id, user_id) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET updated_at = now()
		RETURNING shop_id, user_id, xmax = 0`, m.ConversationID, m.ShopID, m.UserID)
	// While a human owns the conversation the message is the agent's.
	b.Queue(`INSERT INTO messages (id, shop_id, conversation_id, user_id, text, channel, priority,
			client_msg_id, metadata, status, accepted_at)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9,
			CASE WHEN c.state IN ('waiting_human', 'assigned') THEN 'human' ELSE $11 END, $10
		FROM conversations c WHERE c.id = $3 AND c.shop_id = $2 AND c.user_id = $4
		ON CONFLICT DO NOTHING`,
		m.ID, m.ShopID, m.ConversationID, m.UserID, m.Text, m.Channel, string(m.Priority),
		clientMsgID, metadata, m.AcceptedAt, status)
}

// ReplyFor returns the reply that answers message id in shop.
func (db *DB) ReplyFor(ctx context.Context, shop, messageID string) (*peakdesk.Reply, error) {
	var replyID *string
	err := db.pool.QueryRow(ctx, `SELECT reply_id FROM messages WHERE id = $1 AND shop_id = $2`,
		messageID, shop).Scan(&replyID)
	switch {
	case noRows(err) || (err == nil && replyID == nil):
		return nil, notFound("reply")
	case err != nil:
		return nil, fmt.Errorf("storage: reply for: %w", err)
	}
	return db.reply(ctx, shop, *replyID)
}

// replyColumns are the columns scanReply reads: the reply, its customer
// (whose event subject it is published on) and the messages it answers.
const replyColumns = `r.id, r.shop_id, r.conversation_id, r.text, r.source, r.model,
	r.prompt_tokens, r.completion_tokens, r.agent, r.created_at,
	coalesce((SELECT array_agg(m.id ORDER BY m.accepted_at, m.id) FROM messages m WHERE m.reply_id = r.id), '{}'),
	EXISTS (SELECT 1 FROM outbox_actions a WHERE a.reply_id = r.id AND a.kind = 'order.followup' AND a.shop_id = r.shop_id),
	(SELECT c.user_id FROM conversations c WHERE c.id = r.conversation_id AND c.shop_id = r.shop_id)`

func scanReply(row pgx.Row) (*peakdesk.Reply, error) {
	var r peakdesk.Reply
	err := row.Scan(&r.ID, &r.ShopID, &r.ConversationID, &r.Text, &r.Source, &r.Model,
		&r.PromptTokens, &r.CompletionTokens, &r.Agent, &r.CreatedAt, &r.MessageIDs, &r.FollowUp, &r.UserID)
	return &r, err
}

func (db *DB) reply(ctx context.Context, shop, id string) (*peakdesk.Reply, error) {
	r, err := scanReply(db.pool.QueryRow(ctx,
		`SELECT `+replyColumns+` FROM replies r WHERE r.id = $1 AND r.shop_id = $2`, id, shop))
	switch {
	case noRows(err):
		return nil, notFound("reply")
	case err != nil:
		return nil, fmt.Errorf("reply: %w", err)
	}
	return r, nil
}

// MessageRecord is a stored message with its owner, for access checks.
type MessageRecord struct {
	peakdesk.MessageState
	UserID string
}

// Message returns message id of shop with its reply, or ErrNotFound.
func (db *DB) Message(ctx context.Context, shop, id string) (*MessageRecord, error) {
	var rec MessageRecord
	var replyID *string
	var status, priority string
	err := db.pool.QueryRow(ctx, `SELECT id, conversation_id, user_id, priority, status, text,
			accepted_at, reply_id
		FROM messages WHERE id = $1 AND shop_id = $2`, id, shop).Scan(
		&rec.ID, &rec.ConversationID, &rec.UserID, &priority, &status, &rec.Text,
		&rec.CreatedAt, &replyID)
	switch {
	case noRows(err):
		return nil, notFound("message")
	case err != nil:
		return nil, fmt.Errorf("storage: message: %w", err)
	}
	rec.Priority, rec.Status = peakdesk.Priority(priority), apiStatus(status)
	if replyID != nil {
		if rec.Reply, err = db.reply(ctx, shop, *replyID); err != nil {
			return nil, fmt.Errorf("storage: message: %w", err)
		}
	}
	return &rec, nil
}

// ConversationOwner returns the end user of conversation id in shop, or
// ErrNotFound.
func (db *DB) ConversationOwner(ctx context.Context, shop, id string) (string, error) {
	var user string
	err := db.pool.QueryRow(ctx, `SELECT user_id FROM conversations WHERE id = $1 AND shop_id = $2`,
		id, shop).Scan(&user)
	switch {
	case noRows(err):
		return "", notFound("conversation")
	case err != nil:
		return "", fmt.Errorf("storage: conversation owner: %w", err)
	}
	return user, nil
}

// Conversation returns conversation id of shop with its stored messages and
// replies in order, or ErrNotFound.
func (db *DB) Conversation(ctx context.Context, shop, id string) (*peakdesk.Conversation, error) {
	c := peakdesk.Conversation{ID: id, ShopID: shop, Messages: []peakdesk.MessageState{}, Replies: []peakdesk.Reply{}}
	d, err := scanDesk(db.pool.QueryRow(ctx, `SELECT `+deskColumns+`, created_at FROM conversations
		WHERE id = $1 AND shop_id = $2`, id, shop), &c.CreatedAt)
	switch {
	case noRows(err):
		return nil, notFound("conversation")
	case err != nil:
		return nil, fmt.Errorf("storage: conversation: %w", err)
	}
	c.UserID, c.Takeover, c.Handoff = d.UserID, d.Takeover, d.State.HumanOwned()
	rows, err := db.pool.Query(ctx, `SELECT `+replyColumns+` FROM replies r
		WHERE r.conversation_id = $1 AND r.shop_id = $2 ORDER BY r.created_at, r.id`, id, shop)
	if err != nil {
		return nil, fmt.Errorf("storage: conversation replies: %w", err)
	}
	byID := map[string]int{}
	for rows.Next() {
		r, err := scanReply(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("storage: conversation replies: %w", err)
		}
		byID[r.ID] = len(c.Replies)
		c.Replies = append(c.Replies, *r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: conversation replies: %w", err)
	}
	rows, err = db.pool.Query(ctx, `SELECT id, priority, status, text, accepted_at, reply_id
		FROM messages WHERE conversation_id = $1 AND shop_id = $2 ORDER BY accepted_at, id`, id, shop)
	if err != nil {
		return nil, fmt.Errorf("storage: conversation messages: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var m peakdesk.MessageState
		var priority, status string
		var replyID *string
		if err := rows.Scan(&m.ID, &priority, &status, &m.Text, &m.CreatedAt, &replyID); err != nil {
			return nil, fmt.Errorf("storage: conversation messages: %w", err)
		}
		m.ConversationID, m.Priority, m.Status = id, peakdesk.Priority(priority), apiStatus(status)
		if replyID != nil {
			if i, ok := byID[*replyID]; ok {
				m.Reply = &c.Replies[i]
			}
		}
		c.Messages = append(c.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: conversation messages: %w", err)
	}
	return &c, nil
}

// Turn is one side of a conversation, for the LLM's context.
type Turn struct {
	Role string    `json:"role"` // "user" or "assistant"
	Text string    `json:"text"`
	At   time.Time `json:"at"`
}

// apiStatus is the status a client sees: a message waiting for its
// conversation's next turn, or for a human agent, is still queued as far as
// the customer can tell.
func apiStatus(s string) peakdesk.MessageStatus {
	if s == statusWaiting || s == statusHuman {
		return peakdesk.StatusQueued
	}
	return peakdesk.MessageStatus(s)
}

// RecentTurns returns up to n of the latest turns of conversation conv in
// shop, oldest first: the answered messages and the replies. The messages
// named in exclude (those being answered now) and every message not answered
// yet are left out, so the history never shows a question twice or one that
// the coming reply has not seen.
func (db *DB) RecentTurns(ctx context.Context, shop, conv string, n int, exclude []string) ([]Turn, error) {
	// Turn order, not clock order: the messages a reply answered come right
	// before it, even those that arrived while an earlier reply was written.
	rows, err := db.pool.Query(ctx, `SELECT role, text, at FROM (
			SELECT 'user' AS role, m.text, m.accepted_at AS at, r.created_at AS turn, 0 AS side
			FROM messages m JOIN replies r ON r.id = m.reply_id
			WHERE m.conversation_id = $1 AND m.shop_id = $2 AND NOT (m.id = ANY(coalesce($4::text[], '{}')))
			UNION ALL
			SELECT 'assistant', text, created_at, created_at, 1 FROM replies
			WHERE conversation_id = $1 AND shop_id = $2
		) t ORDER BY turn DESC, side DESC, at DESC, text LIMIT $3`, conv, shop, n, exclude)
	if err != nil {
		return nil, fmt.Errorf("storage: recent turns: %w", err)
	}
	turns, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Turn, error) {
		var t Turn
		err := row.Scan(&t.Role, &t.Text, &t.At)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: recent turns: %w", err)
	}
	slices.Reverse(turns)
	return turns, nil
}

// Conversation turns (docs/architecture.md). One worker at a time holds a
// conversation: the holder has a lease on the conversation row (a random
// owner token and an expiry it renews while it works). A message that
// arrives while another worker holds its conversation is stored as waiting;
// the holder answers every waiting message together in its next turn. A turn
// always takes the conversation's oldest unanswered messages, so answers
// come in order even after a failed turn.

const statusWaiting = "waiting"

// statusHuman is a message a human agent answers (human takeover).
const statusHuman = "human"

// ErrTurnLost is returned when a worker's lease on a conversation expired and
// another worker may have taken it; the work of the turn must be dropped.
var ErrTurnLost = errors.New("storage: conversation turn lost to another worker")

// Hold is a worker's hold on a conversation and the messages it answers in
// this turn.
type Hold struct {
	ShopID         string
	ConversationID string
	// Owner is the random token of this hold.
	Owner string
	// Messages are answered together by one reply, oldest first.
	Messages []HeldMessage
	// NewConversation: the claim that got the hold started the
	// conversation, so it has no turns yet (see Memory.Started).
	NewConversation bool
}

// HeldMessage is a message answered in a turn.
type HeldMessage struct {
	peakdesk.Message
	// Attempts counts the turns that took this message, this one included.
	Attempts int
}

// MessageIDs returns the ids of the turn's messages.
func (t *Hold) MessageIDs() []string {
	ids := make([]string, len(t.Messages))
	for i, m := range t.Messages {
		ids[i] = m.ID
	}
	return ids
}

// Includes reports whether message id is answered in this turn.
func (t *Hold) Includes(id string) bool {
	for _, m := range t.Messages {
		if m.ID == id {
			return true
		}
	}
	return false
}

// Claim is what ClaimMessage found. Exactly one of its fields is set.
type Claim struct {
	// Reply: the message is answered already (a redelivery).
	Reply *peakdesk.Reply
	// Hold: the caller holds the conversation and must answer Hold.Messages.
	Hold *Hold
	// Waiting: another worker holds the conversation; the message is stored
	// and will be answered in a later turn.
	Waiting bool
	// Failed: the message was dead-lettered; nothing more is done with it.
	Failed bool
	// Human: a human agent owns the conversation; the message is stored
	// for the agent (announce it with AnnounceHumanMessage) and the bot
	// must not answer it.
	Human bool
}

const unansweredFilter = `conversation_id = $1 AND shop_id = $2 AND reply_id IS NULL
	AND status IN ('waiting', 'processing')`

// takeBatch marks the oldest unanswered messages of a conversation as
// processing, if owner holds it ($1 conversation, $2 shop, $3 owner, $4 max).
const takeBatch = `UPDATE messages SET status = 'processing', attempts = attempts + 1
	WHERE id IN (SELECT id FROM messages WHERE ` + unansweredFilter + `
		ORDER BY accepted_at, id LIMIT $4)
	AND EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND turn_owner = $3)
	RETURNING id, user_id, text, channel, priority, coalesce(client_msg_id, ''), metadata,
		accepted_at, attempts`

// releaseIfDone gives up owner's hold when nothing is left to answer.
const releaseIfDone = `UPDATE conversations SET turn_owner = NULL, turn_until = NULL
	WHERE id = $1 AND shop_id = $2 AND turn_owner = $3
	AND NOT EXISTS (SELECT 1 FROM messages WHERE ` + unansweredFilter + `)`

func collectTurn(rows pgx.Rows, shop, conv, owner string) (*Hold, error) {
	msgs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (HeldMessage, error) {
		var m HeldMessage
		var prio string
		var metadata []byte
		err := row.Scan(&m.ID, &m.UserID, &m.Text, &m.Channel, &prio, &m.ClientMsgID, &metadata,
			&m.AcceptedAt, &m.Attempts)
		m.ShopID, m.ConversationID, m.Priority = shop, conv, peakdesk.Priority(prio)
		if len(metadata) > 0 {
			m.Metadata = metadata
		}
		return m, err
	})
	if err != nil || len(msgs) == 0 {
		return nil, err
	}
	sortHeld(msgs)
	return &Hold{ShopID: shop, ConversationID: conv, Owner: owner, Messages: msgs}, nil
}

// ClaimMessage records that a worker has taken message m from the queue and
// tries to take its conversation for owner, for lease. It creates the
// conversation and the message when absent and is idempotent. When it gets
// the conversation, the turn holds up to maxBatch of its oldest unanswered
// messages (m among them unless older ones are waiting).
func (db *DB) ClaimMessage(ctx context.Context, m *peakdesk.Message, owner string, lease time.Duration, maxBatch int) (*Claim, error) {
	// One pipeline, one implicit transaction. The upsert locks the
	// conversation row, so claims and the holder's end of turn serialise: a
	// message is either seen waiting by the holder or finds it gone.
	b := &pgx.Batch{}
	queueMessageInsert(b, m, "waiting")
	// Only the bot takes turns; a resolved conversation is the bot's again
	// with the customer's next message.
	b.Queue(`UPDATE conversations SET turn_owner = $4, turn_until = now() + $5::interval, next_turn_at = NULL,
			state = 'bot'
		WHERE id = $1 AND shop_id = $2 AND user_id = $3 AND (turn_owner IS NULL OR turn_until < now())
		AND state IN ('bot', 'resolved')
		AND EXISTS (SELECT 1 FROM messages WHERE id = $6 AND shop_id = $2 AND reply_id IS NULL
			AND status IN ('waiting', 'processing'))`,
		m.ConversationID, m.ShopID, m.UserID, owner, lease, m.ID)
	b.Queue(takeBatch, m.ConversationID, m.ShopID, owner, maxBatch)
	b.Queue(`SELECT shop_id, status, reply_id FROM messages WHERE id = $1`, m.ID)

	var convShop, convUser, gotShop, status string
	var replyID *string
	var turn *Hold
	var started bool
	err := func() error {
		br := db.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := br.QueryRow().Scan(&convShop, &convUser, &started); err != nil {
			return err
		}
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if turn, err = collectTurn(rows, m.ShopID, m.ConversationID, owner); err != nil {
			return err
		}
		return br.QueryRow().Scan(&gotShop, &status, &replyID)
	}()
	switch {
	case convShop != "" && (convShop != m.ShopID || convUser != m.UserID):
		return nil, ErrForeignConversation
	case noRows(err):
		return nil, fmt.Errorf("storage: claim message: message row missing after insert")
	case err != nil:
		return nil, fmt.Errorf("storage: claim message: %w", err)
	case gotShop != m.ShopID:
		return nil, ErrForeignConversation
	case replyID != nil:
		r, err := db.reply(ctx, m.ShopID, *replyID)
		if err != nil {
			return nil, fmt.Errorf("storage: claim message: %w", err)
		}
		return &Claim{Reply: r}, nil
	case status == string(peakdesk.StatusFailed):
		return &Claim{Failed: true}, nil
	case status == statusHuman:
		return &Claim{Human: true}, nil
	case turn != nil:
		turn.NewConversation = started
		return &Claim{Hold: turn}, nil
	}
	return &Claim{Waiting: true}, nil
}

// ClaimConversation takes conversation conv of shop for owner, if nobody
// holds it, its retry time has come and it has unanswered messages; it
// returns nil otherwise. The sweeper uses it for messages no queued message
// stands behind any more (waiting ones whose holder died, turns that failed).
func (db *DB) ClaimConversation(ctx context.Context, shop, conv, owner string, lease time.Duration, maxBatch int) (*Hold, error) {
	b := &pgx.Batch{}
	b.Queue(`UPDATE conversations SET turn_owner = $3, turn_until = now() + $4::interval, next_turn_at = NULL,
			state = 'bot'
		WHERE id = $1 AND shop_id = $2 AND (turn_owner IS NULL OR turn_until < now())
		AND (next_turn_at IS NULL OR next_turn_at <= now()) AND state IN ('bot', 'resolved')`,
		conv, shop, owner, lease)
	b.Queue(takeBatch, conv, shop, owner, maxBatch)
	b.Queue(releaseIfDone, conv, shop, owner)
	var turn *Hold
	err := func() error {
		br := db.pool.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if turn, err = collectTurn(rows, shop, conv, owner); err != nil {
			return err
		}
		_, err = br.Exec()
		return err
	}()
	if err != nil {
		return nil, fmt.Errorf("storage: claim conversation: %w", err)
	}
	return turn, nil
}

// TopUpHold adds to t the messages of its conversation that came in since
// it was claimed (up to maxBatch in all), keeping them in order. A worker
// gathers briefly before its first turn because messages sent in quick
// succession reach different workers at about the same time: whichever
// claims first must still answer them in the order they were sent.
func (db *DB) TopUpHold(ctx context.Context, t *Hold, maxBatch int) error {
	if len(t.Messages) >= maxBatch {
		return nil
	}
	rows, err := db.pool.Query(ctx, `UPDATE messages SET status = 'processing', attempts = attempts + 1
		WHERE id IN (SELECT id FROM messages WHERE `+unansweredFilter+` AND NOT (id = ANY($5))
			ORDER BY accepted_at, id LIMIT $4)
		AND EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND turn_owner = $3)
		RETURNING id, user_id, text, channel, priority, coalesce(client_msg_id, ''), metadata,
			accepted_at, attempts`,
		t.ConversationID, t.ShopID, t.Owner, maxBatch-len(t.Messages), t.MessageIDs())
	if err != nil {
		return fmt.Errorf("storage: top up hold: %w", err)
	}
	more, err := collectTurn(rows, t.ShopID, t.ConversationID, t.Owner)
	if err != nil {
		return fmt.Errorf("storage: top up hold: %w", err)
	}
	if more != nil {
		t.Messages = append(t.Messages, more.Messages...)
		sortHeld(t.Messages)
	}
	return nil
}

// RenewHold extends t's hold by lease from now, or returns ErrTurnLost.
func (db *DB) RenewHold(ctx context.Context, t *Hold, lease time.Duration) error {
	tag, err := db.pool.Exec(ctx, `UPDATE conversations SET turn_until = now() + $4::interval
		WHERE id = $1 AND shop_id = $2 AND turn_owner = $3`, t.ConversationID, t.ShopID, t.Owner, lease)
	switch {
	case err != nil:
		return fmt.Errorf("storage: renew hold: %w", err)
	case tag.RowsAffected() == 0:
		return ErrTurnLost
	}
	return nil
}

// RenewHolds extends every hold of holds by lease from now, in one
// statement, and returns those lost (another worker took the conversation,
// or the hold ended). It waits for no lock: a conversation another
// transaction has locked — most often the hold's own turn being stored,
// which renews the hold itself — is skipped this time and counts as lost
// only if, as last committed, another owner has it. A heartbeat must not
// queue behind a group of turns being committed (nor deadlock with one).
func (db *DB) RenewHolds(ctx context.Context, holds []*Hold, lease time.Duration) (lost []*Hold, err error) {
	if len(holds) == 0 {
		return nil, nil
	}
	convs, shops, owners := make([]string, len(holds)), make([]string, len(holds)), make([]string, len(holds))
	for i, h := range holds {
		convs[i], shops[i], owners[i] = h.ConversationID, h.ShopID, h.Owner
	}
	rows, err := db.pool.Query(ctx, `WITH h AS (
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS h(id, shop_id, owner)),
		held AS (
			SELECT c.id FROM conversations c
			JOIN h ON c.id = h.id AND c.shop_id = h.shop_id AND c.turn_owner = h.owner
			FOR UPDATE OF c SKIP LOCKED),
		renewed AS (
			UPDATE conversations c SET turn_until = now() + $4::interval
			FROM held WHERE c.id = held.id
			RETURNING c.id, c.shop_id, c.turn_owner)
		SELECT h.id, h.shop_id, h.owner FROM h
		WHERE NOT EXISTS (SELECT 1 FROM renewed r
				WHERE r.id = h.id AND r.shop_id = h.shop_id AND r.turn_owner = h.owner)
			AND NOT EXISTS (SELECT 1 FROM conversations c
				WHERE c.id = h.id AND c.shop_id = h.shop_id AND c.turn_owner = h.owner)`,
		convs, shops, owners, lease)
	if err != nil {
		return nil, fmt.Errorf("storage: renew holds: %w", err)
	}
	type key struct{ conv, shop, owner string }
	gone := map[key]bool{}
	var k key
	_, err = pgx.ForEachRow(rows, []any{&k.conv, &k.shop, &k.owner}, func() error {
		gone[k] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: renew holds: %w", err)
	}
	for _, h := range holds {
		if gone[key{h.ConversationID, h.ShopID, h.Owner}] {
			lost = append(lost, h)
		}
	}
	return lost, nil
}

// TurnReply is what SaveTurn stores.
type TurnReply struct {
	// Reply answers the hold's messages; its MessageIDs must be theirs.
	Reply *peakdesk.Reply
	// EventPending marks a reply whose event no queued message will
	// re-publish if the caller dies before publishing it (see PendingEvents).
	EventPending bool
	// InTx, when set, runs in the reply's transaction once the reply is
	// stored (outbox actions, the reply webhook); its error undoes it all.
	InTx func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error
	// Handoff, when set, hands the conversation to a human with the reply
	// (the handoff reply, a tool's handoff): the reply answers the turn's
	// messages, later ones wait for the agent, and the turn ends.
	Handoff *HandOff
}

// SaveTurn stores tr.Reply as the one reply to h's messages, in one
// transaction that first checks h still holds the conversation
// (ErrTurnLost otherwise) and that the bot still has it (ErrHumanOwned
// otherwise: a human agent took it meanwhile); on either error nothing is
// stored. Outbox actions it stores do not wake the relays: call
// NotifyRelays after it (batched; see deferRelayNotify).
//
// If more messages waited meanwhile, the hold is renewed for lease and the
// next turn, with up to maxBatch of them, is returned; otherwise (or when
// the reply hands the conversation to a human) the hold is given up and
// next is nil.
func (db *DB) SaveTurn(ctx context.Context, h *Hold, tr TurnReply, lease time.Duration, maxBatch int) (next *Hold, err error) {
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// No NOTIFY from this transaction (it would serialise every turn's
		// commit): the caller wakes the relays after commit (NotifyRelays).
		next, err = saveTurnTx(ctx, tx, h, tr, lease, maxBatch, func(b *pgx.Batch) int {
			b.Queue(deferRelayNotify)
			return 1
		})
		return err
	})
	if err != nil {
		return nil, saveTurnErr(err)
	}
	return next, nil
}

// saveTurnErr is what SaveTurn returns for an error of saveTurnTx.
func saveTurnErr(err error) error {
	switch {
	case errors.Is(err, ErrTurnLost), errors.Is(err, ErrAlreadyAnswered), errors.Is(err, ErrHumanOwned):
		return err
	case isUniqueViolation(err):
		return ErrAlreadyAnswered
	}
	return fmt.Errorf("storage: save turn: %w", err)
}

// saveTurnTx stores tr in tx as SaveTurn describes, in one round trip
// (plus the handoff's and tr.InTx's statements, if any). pre queues
// statements ahead of the turn's own in that round trip and returns how
// many it queued; their results are only checked for errors.
func saveTurnTx(ctx context.Context, tx pgx.Tx, h *Hold, tr TurnReply, lease time.Duration, maxBatch int,
	pre func(*pgx.Batch) int) (next *Hold, err error) {
	r := tr.Reply
	b := &pgx.Batch{}
	npre := 0
	if pre != nil {
		npre = pre(b)
	}
	b.Queue(`UPDATE conversations SET turn_until = clock_timestamp() + $4::interval, updated_at = now()
		WHERE id = $1 AND shop_id = $2 AND turn_owner = $3
		RETURNING state`,
		h.ConversationID, h.ShopID, h.Owner, lease)
	// created_at is the moment the row is written, not now() (the
	// transaction's start): a group commit stores many turns one after
	// another, and each reply's time (its order in the conversation, the
	// start of its delivery latency) is its own.
	b.Queue(`INSERT INTO replies (id, shop_id, conversation_id, text, source, model,
			prompt_tokens, completion_tokens, cost_micro_usd, event_pending, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp()) RETURNING created_at`,
		r.ID, r.ShopID, r.ConversationID, r.Text, r.Source, r.Model,
		r.PromptTokens, r.CompletionTokens, r.CostMicroUSD, tr.EventPending)
	// A message dead-lettered meanwhile (status failed; its customer was
	// told a human takes over) is not answered here: the count below
	// comes up short and the turn is retried without it.
	b.Queue(`UPDATE messages
		SET status = 'answered', reply_id = $1, answered_at = now(), last_error = NULL
		WHERE id = ANY($2) AND shop_id = $3 AND conversation_id = $4 AND reply_id IS NULL
			AND status IN ('waiting', 'processing')`,
		r.ID, r.MessageIDs, r.ShopID, r.ConversationID)
	if tr.Handoff == nil {
		b.Queue(takeBatch, h.ConversationID, h.ShopID, h.Owner, maxBatch)
		b.Queue(releaseIfDone, h.ConversationID, h.ShopID, h.Owner)
	}
	if err := saveTurnBatch(tx.SendBatch(ctx, b), npre, h, r, &next, tr.Handoff == nil); err != nil {
		return nil, err
	}
	if tr.Handoff != nil {
		// The reply answers the turn; whatever came meanwhile waits
		// for the agent, and the bot's turn ends here.
		if _, err := handOff(ctx, tx, h.ShopID, h.ConversationID, *tr.Handoff); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `UPDATE conversations SET turn_owner = NULL, turn_until = NULL
			WHERE id = $1 AND shop_id = $2 AND turn_owner = $3`, h.ConversationID, h.ShopID, h.Owner); err != nil {
			return nil, err
		}
	}
	if tr.InTx != nil {
		if err := tr.InTx(ctx, tx, r); err != nil {
			return nil, err
		}
	}
	return next, nil
}

// saveTurnBatch reads SaveTurn's batch and closes it: npre leading
// statements, then the turn's; withNext: the batch takes the next turn.
func saveTurnBatch(br pgx.BatchResults, npre int, h *Hold, r *peakdesk.Reply, next **Hold, withNext bool) error {
	defer br.Close()
	for range npre {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	var state string
	err := br.QueryRow().Scan(&state)
	switch {
	case noRows(err):
		return ErrTurnLost
	case err != nil:
		return err
	case peakdesk.ConversationState(state).HumanOwned():
		return ErrHumanOwned
	}
	if err := br.QueryRow().Scan(&r.CreatedAt); err != nil {
		return err
	}
	tag, err := br.Exec()
	if err != nil {
		return err
	}
	if int(tag.RowsAffected()) != len(r.MessageIDs) {
		return ErrAlreadyAnswered
	}
	if !withNext {
		return br.Close()
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	if *next, err = collectTurn(rows, h.ShopID, h.ConversationID, h.Owner); err != nil {
		return err
	}
	if _, err := br.Exec(); err != nil {
		return err
	}
	return br.Close()
}

// FailTurn gives up t's hold after a failed attempt: the messages keep their
// place in line with lastErr noted, and the conversation is not retried by
// the sweeper before retryAfter has passed (a new message of the
// conversation, or a redelivery, may try sooner).
func (db *DB) FailTurn(ctx context.Context, t *Hold, retryAfter time.Duration, lastErr string) error {
	b := &pgx.Batch{}
	b.Queue(`UPDATE messages SET last_error = $3 WHERE id = ANY($1) AND shop_id = $2 AND reply_id IS NULL`,
		t.MessageIDs(), t.ShopID, truncate(lastErr, 500))
	b.Queue(`UPDATE conversations SET turn_owner = NULL, turn_until = NULL, next_turn_at = now() + $4::interval
		WHERE id = $1 AND shop_id = $2 AND turn_owner = $3`, t.ConversationID, t.ShopID, t.Owner, retryAfter)
	if err := db.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storage: fail turn: %w", err)
	}
	return nil
}

// ReleaseHold gives up t's hold at once (a stopping worker), so another
// worker can take the conversation without waiting for the lease to expire.
func (db *DB) ReleaseHold(ctx context.Context, t *Hold) error {
	_, err := db.pool.Exec(ctx, `UPDATE conversations SET turn_owner = NULL, turn_until = NULL
		WHERE id = $1 AND shop_id = $2 AND turn_owner = $3`, t.ConversationID, t.ShopID, t.Owner)
	if err != nil {
		return fmt.Errorf("storage: release hold: %w", err)
	}
	return nil
}

// ConversationRef names a conversation.
type ConversationRef struct {
	ShopID, ConversationID string
}

// DueConversations returns up to limit conversations with unanswered
// messages stored more than grace ago that nobody holds and whose retry time
// has come: those whose holder died, or whose last turn failed.
func (db *DB) DueConversations(ctx context.Context, grace time.Duration, limit int) ([]ConversationRef, error) {
	rows, err := db.pool.Query(ctx, `SELECT m.shop_id, m.conversation_id
		FROM messages m JOIN conversations c ON c.id = m.conversation_id
		WHERE m.reply_id IS NULL AND m.status IN ('waiting', 'processing')
			AND m.created_at < now() - $1::interval
			AND (c.turn_owner IS NULL OR c.turn_until < now())
			AND (c.next_turn_at IS NULL OR c.next_turn_at <= now())
		GROUP BY m.shop_id, m.conversation_id
		ORDER BY min(m.accepted_at) LIMIT $2`, grace, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: due conversations: %w", err)
	}
	refs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ConversationRef, error) {
		var r ConversationRef
		err := row.Scan(&r.ShopID, &r.ConversationID)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: due conversations: %w", err)
	}
	return refs, nil
}

// PendingEvents returns up to limit replies stored more than grace ago whose
// event is not known to be published.
func (db *DB) PendingEvents(ctx context.Context, grace time.Duration, limit int) ([]*peakdesk.Reply, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+replyColumns+` FROM replies r
		WHERE r.event_pending AND r.created_at < now() - $1::interval
		ORDER BY r.created_at LIMIT $2`, grace, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: pending events: %w", err)
	}
	defer rows.Close()
	var out []*peakdesk.Reply
	for rows.Next() {
		r, err := scanReply(rows)
		if err != nil {
			return nil, fmt.Errorf("storage: pending events: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: pending events: %w", err)
	}
	return out, nil
}

// EventPublished notes that reply id's event is published.
func (db *DB) EventPublished(ctx context.Context, shop, id string) error {
	_, err := db.pool.Exec(ctx, `UPDATE replies SET event_pending = false
		WHERE id = $1 AND shop_id = $2 AND event_pending`, id, shop)
	if err != nil {
		return fmt.Errorf("storage: event published: %w", err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func sortHeld(msgs []HeldMessage) {
	slices.SortFunc(msgs, func(a, b HeldMessage) int {
		if c := a.AcceptedAt.Compare(b.AcceptedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
