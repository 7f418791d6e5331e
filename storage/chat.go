package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// ErrAlreadyAnswered is returned by SaveReply when another reply got to one
// of the messages first; the caller's reply was not stored.
var ErrAlreadyAnswered = errors.New("storage: message already answered")

// ErrForeignConversation is returned by BeginMessage when the conversation id
// is already held by another shop or user. The message must not be answered.
var ErrForeignConversation = errors.New("storage: conversation belongs to someone else")

// EnsureShop creates shop id if it does not exist.
func (db *DB) EnsureShop(ctx context.Context, id, name string) error {
	_, err := db.pool.Exec(ctx,
		`INSERT INTO shops (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, id, name)
	if err != nil {
		return fmt.Errorf("storage: ensure shop: %w", err)
	}
	return nil
}

// ShopExists reports whether shop id is provisioned.
func (db *DB) ShopExists(ctx context.Context, id string) (bool, error) {
	var ok bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shops WHERE id = $1)`, id).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("storage: shop exists: %w", err)
	}
	return ok, nil
}

// BeginMessage records that a worker has taken message m: it creates the
// conversation and the message row (status processing) when absent. If the
// message was answered already (a redelivery), it returns that reply and the
// caller must not answer again. It is idempotent.
func (db *DB) BeginMessage(ctx context.Context, m *peakdesk.Message) (*peakdesk.Reply, error) {
	var clientMsgID *string
	if m.ClientMsgID != "" {
		clientMsgID = &m.ClientMsgID
	}
	var metadata []byte
	if len(m.Metadata) > 0 {
		metadata = m.Metadata
	}
	// One pipeline, one implicit transaction: upsert the conversation, insert
	// the message unless present, then read back who holds what.
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO conversations (id, shop_id, user_id) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET updated_at = now()
		RETURNING shop_id, user_id`, m.ConversationID, m.ShopID, m.UserID)
	b.Queue(`INSERT INTO messages (id, shop_id, conversation_id, user_id, text, channel, priority,
			client_msg_id, metadata, status, accepted_at)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 'processing', $10
		WHERE EXISTS (SELECT 1 FROM conversations WHERE id = $3 AND shop_id = $2 AND user_id = $4)
		ON CONFLICT DO NOTHING`,
		m.ID, m.ShopID, m.ConversationID, m.UserID, m.Text, m.Channel, string(m.Priority),
		clientMsgID, metadata, m.AcceptedAt)
	b.Queue(`SELECT shop_id, reply_id FROM messages WHERE id = $1`, m.ID)

	var convShop, convUser, gotShop string
	var replyID *string
	err := func() error {
		br := db.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := br.QueryRow().Scan(&convShop, &convUser); err != nil {
			return err
		}
		if _, err := br.Exec(); err != nil {
			return err
		}
		return br.QueryRow().Scan(&gotShop, &replyID)
	}()
	switch {
	case convShop != "" && (convShop != m.ShopID || convUser != m.UserID):
		return nil, ErrForeignConversation
	case noRows(err):
		return nil, fmt.Errorf("storage: begin message: message row missing after insert")
	case err != nil:
		return nil, fmt.Errorf("storage: begin message: %w", err)
	case gotShop != m.ShopID:
		return nil, ErrForeignConversation
	case replyID == nil:
		return nil, nil
	}
	r, err := db.reply(ctx, m.ShopID, *replyID)
	if err != nil {
		return nil, fmt.Errorf("storage: begin message: %w", err)
	}
	return r, nil
}

// SaveReply stores r and marks every message in r.MessageIDs answered by it,
// in one transaction. If any of them already has a reply, nothing is stored
// and ErrAlreadyAnswered is returned.
func (db *DB) SaveReply(ctx context.Context, r *peakdesk.Reply) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source, model,
				prompt_tokens, completion_tokens)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING created_at`,
			r.ID, r.ShopID, r.ConversationID, r.Text, r.Source, r.Model,
			r.PromptTokens, r.CompletionTokens).Scan(&r.CreatedAt)
		if err != nil {
			return err
		}
		if r.Source == peakdesk.SourceHandoff {
			if _, err := tx.Exec(ctx, `UPDATE conversations SET handoff = true, updated_at = now()
				WHERE id = $1 AND shop_id = $2`, r.ConversationID, r.ShopID); err != nil {
				return err
			}
		}
		if len(r.MessageIDs) == 0 {
			return nil
		}
		tag, err := tx.Exec(ctx, `UPDATE messages
			SET status = 'answered', reply_id = $1, answered_at = now()
			WHERE id = ANY($2) AND shop_id = $3 AND conversation_id = $4 AND reply_id IS NULL`,
			r.ID, r.MessageIDs, r.ShopID, r.ConversationID)
		if err != nil {
			return err
		}
		if int(tag.RowsAffected()) != len(r.MessageIDs) {
			return ErrAlreadyAnswered
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrAlreadyAnswered):
		return err
	case isUniqueViolation(err):
		return ErrAlreadyAnswered
	case err != nil:
		return fmt.Errorf("storage: save reply: %w", err)
	}
	return nil
}

// ReplyFor returns the reply that answers message id in shop.
func (db *DB) ReplyFor(ctx context.Context, shop, messageID string) (*peakdesk.Reply, error) {
	var replyID *string
	err := db.pool.QueryRow(ctx, `SELECT reply_id FROM messages WHERE id = $1 AND shop_id = $2`,
		messageID, shop).Scan(&replyID)
	switch {
	case noRows(err) || (err == nil && replyID == nil):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("storage: reply for: %w", err)
	}
	return db.reply(ctx, shop, *replyID)
}

const replyColumns = `r.id, r.shop_id, r.conversation_id, r.text, r.source, r.model,
	r.prompt_tokens, r.completion_tokens, r.created_at,
	coalesce((SELECT array_agg(m.id ORDER BY m.accepted_at, m.id) FROM messages m WHERE m.reply_id = r.id), '{}')`

func scanReply(row pgx.Row) (*peakdesk.Reply, error) {
	var r peakdesk.Reply
	err := row.Scan(&r.ID, &r.ShopID, &r.ConversationID, &r.Text, &r.Source, &r.Model,
		&r.PromptTokens, &r.CompletionTokens, &r.CreatedAt, &r.MessageIDs)
	return &r, err
}

func (db *DB) reply(ctx context.Context, shop, id string) (*peakdesk.Reply, error) {
	r, err := scanReply(db.pool.QueryRow(ctx,
		`SELECT `+replyColumns+` FROM replies r WHERE r.id = $1 AND r.shop_id = $2`, id, shop))
	switch {
	case noRows(err):
		return nil, ErrNotFound
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
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("storage: message: %w", err)
	}
	rec.Priority, rec.Status = peakdesk.Priority(priority), peakdesk.MessageStatus(status)
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
		return "", ErrNotFound
	case err != nil:
		return "", fmt.Errorf("storage: conversation owner: %w", err)
	}
	return user, nil
}

// Conversation returns conversation id of shop with its stored messages and
// replies in order, or ErrNotFound.
func (db *DB) Conversation(ctx context.Context, shop, id string) (*peakdesk.Conversation, error) {
	c := peakdesk.Conversation{ID: id, ShopID: shop, Messages: []peakdesk.MessageState{}, Replies: []peakdesk.Reply{}}
	err := db.pool.QueryRow(ctx, `SELECT user_id, handoff, created_at FROM conversations
		WHERE id = $1 AND shop_id = $2`, id, shop).Scan(&c.UserID, &c.Handoff, &c.CreatedAt)
	switch {
	case noRows(err):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("storage: conversation: %w", err)
	}
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
		m.ConversationID, m.Priority, m.Status = id, peakdesk.Priority(priority), peakdesk.MessageStatus(status)
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

// RecentTurns returns up to n of the latest turns of conversation conv in
// shop, oldest first, leaving out the messages named in exclude (those being
// answered now).
func (db *DB) RecentTurns(ctx context.Context, shop, conv string, n int, exclude []string) ([]Turn, error) {
	rows, err := db.pool.Query(ctx, `SELECT role, text, at FROM (
			SELECT 'user' AS role, text, accepted_at AS at FROM messages
			WHERE conversation_id = $1 AND shop_id = $2 AND NOT (id = ANY($4))
			UNION ALL
			SELECT 'assistant', text, created_at FROM replies
			WHERE conversation_id = $1 AND shop_id = $2
		) t ORDER BY at DESC LIMIT $3`, conv, shop, n, exclude)
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
