package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// DLQ entry states.
const (
	DLQDead      = "dead"
	DLQRedriven  = "redriven"
	DLQDiscarded = "discarded"
)

// ErrDLQResolved is returned when an operator acts on a dead letter that was
// already resolved the other way (re-driving a discarded one, discarding a
// re-driven one). It is an invalid_argument peakdesk.Error.
var ErrDLQResolved = &peakdesk.Error{Code: peakdesk.EInvalid,
	Message: "the dead letter was already resolved the other way"}

// DeadLetter is a message that used up its JetStream deliveries.
type DeadLetter struct {
	Message peakdesk.Message
	// Subject is the CHAT_IN subject it was queued on; InSeq its sequence.
	Subject    string
	InSeq      uint64
	Deliveries int
	// Reason says why it died; RecordDeadLetter appends the stored message's
	// last error.
	Reason string
}

// DLQEntry is a dead letter as operators see it.
type DLQEntry struct {
	ID             int64     `json:"id,string"`
	ShopID         string    `json:"shop"`
	MessageID      string    `json:"message_id"`
	ConversationID string    `json:"conversation_id"`
	Priority       string    `json:"priority"`
	Subject        string    `json:"subject"`
	InSeq          uint64    `json:"in_seq"`
	DLQSeq         uint64    `json:"dlq_seq,omitempty"`
	Deliveries     int       `json:"deliveries"`
	Reason         string    `json:"reason"`
	State          string    `json:"state"`
	CreatedAt      time.Time `json:"created_at"`
	ResolvedAt     time.Time `json:"resolved_at,omitzero"`
	ResolvedBy     string    `json:"resolved_by,omitempty"`
	// Text is the customer's message, masked: operators need to see what
	// failed, not the customer's phone or card number. Reason is masked too
	// (it quotes the message's last error).
	Text string `json:"text"`
}

const dlqColumns = `d.id, d.shop_id, d.message_id, d.conversation_id, d.priority, d.subject, d.in_seq,
	d.dlq_seq, d.deliveries, d.reason, d.state, d.created_at, d.resolved_at, coalesce(d.resolved_by, ''),
	coalesce((SELECT m.text FROM messages m WHERE m.id = d.message_id AND m.shop_id = d.shop_id), '')`

func scanDLQ(row pgx.Row) (*DLQEntry, error) {
	var e DLQEntry
	var inSeq, dlqSeq int64
	var resolvedAt *time.Time
	err := row.Scan(&e.ID, &e.ShopID, &e.MessageID, &e.ConversationID, &e.Priority, &e.Subject, &inSeq,
		&dlqSeq, &e.Deliveries, &e.Reason, &e.State, &e.CreatedAt, &resolvedAt, &e.ResolvedBy, &e.Text)
	e.InSeq, e.DLQSeq = uint64(inSeq), uint64(dlqSeq)
	// The message row keeps the customer's words until the shop's retention
	// ends; an entry is the operators' view of it, so it is masked here,
	// where every entry is produced (and the reasons of entries recorded
	// before reasons were masked with them).
	e.Text, _ = pii.Mask(e.Text)
	e.Reason, _ = pii.Mask(e.Reason)
	if resolvedAt != nil {
		e.ResolvedAt = *resolvedAt
	}
	return &e, err
}

// DeadLetterOutcome is what RecordDeadLetter did.
type DeadLetterOutcome struct {
	// Answered is set when the message turned out to be answered already:
	// nothing was recorded and it only has to leave CHAT_IN.
	Answered *peakdesk.Reply
	// Entry is the dead-letter entry (new or from an earlier attempt).
	Entry *DLQEntry
	// Notice is the handoff notice posted on the conversation: the customer
	// is told at once that a human agent takes over.
	Notice *peakdesk.Reply
}

// RecordDeadLetter marks d's message failed and lists it for operators, in
// one transaction; it is idempotent (the max-deliveries advisory may be
// handled twice). The message row is created if no worker ever stored it.
// The conversation is marked for a human agent and gets one notice reply
// (linked to no message, so the message can still get its own answer when an
// operator re-drives it) with noticeText.
func (db *DB) RecordDeadLetter(ctx context.Context, d *DeadLetter, noticeText string) (*DeadLetterOutcome, error) {
	m := &d.Message
	var out DeadLetterOutcome
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var convShop, convUser string
		if err := tx.QueryRow(ctx, `INSERT INTO conversations (id, shop_id, user_id) VALUES ($1, $2, $3)
			ON CONFLICT (id) DO UPDATE SET updated_at = now()
			RETURNING shop_id, user_id`, m.ConversationID, m.ShopID, m.UserID).Scan(&convShop, &convUser); err != nil {
			return err
		}
		ours := convShop == m.ShopID && convUser == m.UserID
		if ours {
			var clientMsgID *string
			if m.ClientMsgID != "" {
				clientMsgID = &m.ClientMsgID
			}
			var metadata []byte
			if len(m.Metadata) > 0 {
				metadata = m.Metadata
			}
			if _, err := tx.Exec(ctx, `INSERT INTO messages (id, shop_id, conversation_id, user_id, text,
					channel, priority, client_msg_id, metadata, status, accepted_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'failed', $10) ON CONFLICT DO NOTHING`,
				m.ID, m.ShopID, m.ConversationID, m.UserID, m.Text, m.Channel, string(m.Priority),
				clientMsgID, metadata, m.AcceptedAt); err != nil {
				return err
			}
		}
		var replyID, lastErr *string
		err := tx.QueryRow(ctx, `SELECT reply_id, last_error FROM messages WHERE id = $1 AND shop_id = $2
			FOR UPDATE`, m.ID, m.ShopID).Scan(&replyID, &lastErr)
		switch {
		case noRows(err):
			ours = false // the id or the conversation is someone else's
		case err != nil:
			return err
		case replyID != nil:
			r, err := replyIn(ctx, tx, m.ShopID, *replyID)
			out.Answered = r
			return err
		}
		reason := d.Reason
		if lastErr != nil && *lastErr != "" {
			reason += "; last error: " + *lastErr
		}
		if _, err := tx.Exec(ctx, `INSERT INTO dlq_entries (shop_id, message_id, conversation_id, priority,
				subject, in_seq, deliveries, reason)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (in_seq, message_id) DO NOTHING`,
			m.ShopID, m.ID, m.ConversationID, string(m.Priority), d.Subject, int64(d.InSeq), d.Deliveries,
			truncate(maskedText(reason), 1000)); err != nil {
			return err
		}
		if out.Entry, err = scanDLQ(tx.QueryRow(ctx, `SELECT `+dlqColumns+` FROM dlq_entries d
			WHERE d.in_seq = $1 AND d.message_id = $2`, int64(d.InSeq), m.ID)); err != nil {
			return err
		}
		if !ours {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE messages SET status = 'failed' WHERE id = $1 AND reply_id IS NULL`,
			m.ID); err != nil {
			return err
		}
		if _, err := handOff(ctx, tx, m.ShopID, m.ConversationID, HandOff{Reason: peakdesk.HandoffDeadLetter,
			Priority: m.Priority, Announce: []string{m.ID}}); err != nil {
			return err
		}
		noticeID := noticeID(m.ID, d.InSeq)
		if _, err := tx.Exec(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING`,
			noticeID, m.ShopID, m.ConversationID, noticeText, peakdesk.SourceHandoff); err != nil {
			return err
		}
		out.Notice, err = replyIn(ctx, tx, m.ShopID, noticeID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: record dead letter: %w", err)
	}
	return &out, nil
}

func maskedText(s string) string {
	masked, _ := pii.Mask(s)
	return masked
}

// noticeID derives the id of a dead letter's notice reply, so recording it
// twice posts one notice.
func noticeID(messageID string, inSeq uint64) string {
	h := sha256.Sum256([]byte("dlq-notice:" + messageID + ":" + strconv.FormatUint(inSeq, 10)))
	return hex.EncodeToString(h[:16])
}

func replyIn(ctx context.Context, q pgx.Tx, shop, id string) (*peakdesk.Reply, error) {
	r, err := scanReply(q.QueryRow(ctx, `SELECT `+replyColumns+` FROM replies r WHERE r.id = $1 AND r.shop_id = $2`,
		id, shop))
	if err != nil {
		return nil, fmt.Errorf("reply: %w", err)
	}
	return r, nil
}

// SetDLQSeq notes where in CHAT_DLQ entry id's copy is.
func (db *DB) SetDLQSeq(ctx context.Context, id int64, seq uint64) error {
	if _, err := db.pool.Exec(ctx, `UPDATE dlq_entries SET dlq_seq = $2 WHERE id = $1`, id, int64(seq)); err != nil {
		return fmt.Errorf("storage: set dlq seq: %w", err)
	}
	return nil
}

// DLQFilter selects dead letters.
type DLQFilter struct {
	// Scope is the operator's shop claim: a shop id, or "*" for every shop.
	Scope string
	// Shop narrows a "*" scope to one shop; ignored for a shop scope.
	Shop string
	// State is dead, redriven or discarded; empty = all.
	State string
	// Before is a cursor: entries with a smaller id (0 = from the newest).
	Before int64
	// Limit defaults to 50.
	Limit int
}

// ListDLQ returns the dead letters f selects, newest first.
func (db *DB) ListDLQ(ctx context.Context, f DLQFilter) ([]DLQEntry, error) {
	shop := f.Shop
	if f.Scope != "*" {
		shop = f.Scope
	}
	if f.Limit <= 0 {
		f.Limit = 50
	}
	rows, err := db.pool.Query(ctx, `SELECT `+dlqColumns+` FROM dlq_entries d
		WHERE ($1 = '' OR d.shop_id = $1) AND ($2 = '' OR d.state = $2) AND ($3 = 0 OR d.id < $3)
		ORDER BY d.id DESC LIMIT $4`, shop, f.State, f.Before, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("storage: list dlq: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DLQEntry, error) {
		e, err := scanDLQ(row)
		return *e, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: list dlq: %w", err)
	}
	return entries, nil
}

// DLQAction is an operator's act on a dead letter.
type DLQAction struct {
	ID int64
	// Scope is the operator's shop claim; an entry outside it is ErrNotFound.
	Scope string
	// Actor is the operator.
	Actor string
}

// RedriveDLQ marks entry a.ID re-driven and puts its message back in line
// (status waiting, attempts reset), with an audit record, in one
// transaction. The caller then re-publishes the message to CHAT_IN; should
// that fail, the sweeper answers the waiting message anyway. Re-driving a
// re-driven entry succeeds again (the caller re-publishes under the same
// message id, which JetStream and the worker deduplicate).
func (db *DB) RedriveDLQ(ctx context.Context, a DLQAction) (*DLQEntry, error) {
	return db.resolveDLQ(ctx, a, DLQRedriven, func(tx pgx.Tx, e *DLQEntry) error {
		_, err := tx.Exec(ctx, `UPDATE messages SET status = 'waiting', attempts = 0, last_error = NULL
			WHERE id = $1 AND shop_id = $2 AND status = 'failed' AND reply_id IS NULL`, e.MessageID, e.ShopID)
		return err
	})
}

// DiscardDLQ marks entry a.ID discarded, with an audit record: its message
// stays failed and its conversation stays with a human agent. Discarding a
// discarded entry succeeds again.
func (db *DB) DiscardDLQ(ctx context.Context, a DLQAction) (*DLQEntry, error) {
	return db.resolveDLQ(ctx, a, DLQDiscarded, nil)
}

func (db *DB) resolveDLQ(ctx context.Context, a DLQAction, to string, also func(pgx.Tx, *DLQEntry) error) (*DLQEntry, error) {
	var e *DLQEntry
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var err error
		e, err = scanDLQ(tx.QueryRow(ctx, `SELECT `+dlqColumns+` FROM dlq_entries d
			WHERE d.id = $1 AND ($2 = '*' OR d.shop_id = $2) FOR UPDATE`, a.ID, a.Scope))
		switch {
		case noRows(err):
			return notFound("dead letter")
		case err != nil:
			return err
		case e.State != DLQDead && e.State != to:
			return ErrDLQResolved
		}
		if e.State == DLQDead {
			if err := tx.QueryRow(ctx, `UPDATE dlq_entries SET state = $2, resolved_at = now(), resolved_by = $3
				WHERE id = $1 RETURNING resolved_at`, a.ID, to, a.Actor).Scan(&e.ResolvedAt); err != nil {
				return err
			}
			e.State, e.ResolvedBy = to, a.Actor
		}
		if also != nil {
			if err := also(tx, e); err != nil {
				return err
			}
		}
		details, _ := json.Marshal(map[string]any{"message_id": e.MessageID, "conversation_id": e.ConversationID,
			"in_seq": e.InSeq, "dlq_seq": e.DLQSeq})
		return InsertAudit(ctx, tx, &AuditEntry{Actor: a.Actor, Scope: a.Scope, Shop: e.ShopID,
			Action: "dlq." + map[string]string{DLQRedriven: "redrive", DLQDiscarded: "discard"}[to],
			Target: "dlq:" + strconv.FormatInt(e.ID, 10), Details: details})
	})
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrDLQResolved):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("storage: %s dlq entry: %w", to, err)
	}
	return e, nil
}

// QueuedMessage rebuilds the queued form of a stored message, for a re-drive
// whose CHAT_DLQ copy is gone.
func (db *DB) QueuedMessage(ctx context.Context, shop, id string) (*peakdesk.Message, error) {
	var m peakdesk.Message
	var prio string
	var metadata []byte
	err := db.pool.QueryRow(ctx, `SELECT id, shop_id, conversation_id, user_id, text, channel, priority,
			coalesce(client_msg_id, ''), metadata, accepted_at
		FROM messages WHERE id = $1 AND shop_id = $2`, id, shop).Scan(&m.ID, &m.ShopID, &m.ConversationID,
		&m.UserID, &m.Text, &m.Channel, &prio, &m.ClientMsgID, &metadata, &m.AcceptedAt)
	switch {
	case noRows(err):
		return nil, notFound("message")
	case err != nil:
		return nil, fmt.Errorf("storage: queued message: %w", err)
	}
	m.Priority = peakdesk.Priority(prio)
	if len(metadata) > 0 {
		m.Metadata = metadata
	}
	return &m, nil
}
