package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// SaveFollowUp stores a reply that answers no single message (an order
// follow-up, a handoff notice) together with its webhook action, built by
// webhook from the stored reply (nil: none), in one transaction. The reply id is derived by the caller from what caused it, so
// a repeat stores nothing and reports stored = false. With handoff set, the
// conversation goes to a human (an order follow-up given up).
func (db *DB) SaveFollowUp(ctx context.Context, r *peakdesk.Reply, webhook func(*peakdesk.Reply) (peakdesk.Action, error), handoff bool) (stored bool, err error) {
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source, model)
			SELECT $1, $2, $3, $4, $5, $6
			WHERE EXISTS (SELECT 1 FROM conversations WHERE id = $3 AND shop_id = $2)
			ON CONFLICT (id) DO NOTHING
			RETURNING created_at, (SELECT user_id FROM conversations WHERE id = $3 AND shop_id = $2)`,
			r.ID, r.ShopID, r.ConversationID, r.Text, r.Source, r.Model).Scan(&r.CreatedAt, &r.UserID)
		if noRows(err) {
			return nil // a repeat, or a conversation not of this shop
		}
		if err != nil {
			return err
		}
		stored = true
		if handoff {
			// A follow-up gives up on an order lookup: what the customer
			// waits with is an order question.
			if _, err := handOff(ctx, tx, r.ShopID, r.ConversationID,
				HandOff{Reason: peakdesk.HandoffOrderLookup, Priority: peakdesk.P1}); err != nil {
				return err
			}
		}
		if webhook != nil {
			a, err := webhook(r)
			if err != nil {
				return err
			}
			if _, err := InsertReplyWebhook(ctx, tx, a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("storage: save follow-up: %w", err)
	}
	if !stored {
		// Fill in the stored copy so the caller can re-publish its event.
		stored2, err := db.reply(ctx, r.ShopID, r.ID)
		if err != nil {
			return false, fmt.Errorf("storage: save follow-up: %w", err)
		}
		*r = *stored2
	}
	return stored, nil
}

// SaveAnsweredMessage stores message m already answered by r — the edge's
// instant FAQ answer to a shed message — in one transaction, so no worker
// ever sees m unanswered. If m is stored already (an idempotent repeat), it
// stores nothing and returns m's reply (nil while m is still being
// answered) with existed = true.
//
// webhook builds the reply's webhook action from the stored reply (nil:
// none); it is inserted in the same transaction when the shop has a
// webhook URL. actions are what the reply promises (an order follow-up),
// inserted in the same transaction with the reply's id.
//
// While a human agent owns m's conversation, r is not stored: m is stored
// for the agent (announced with its message.created webhook) and
// ErrHumanOwned is returned.
func (db *DB) SaveAnsweredMessage(ctx context.Context, m *peakdesk.Message, r *peakdesk.Reply,
	webhook func(*peakdesk.Reply) (peakdesk.Action, error), actions ...peakdesk.Action) (stored *peakdesk.Reply, existed bool, err error) {
	var clientMsgID *string
	if m.ClientMsgID != "" {
		clientMsgID = &m.ClientMsgID
	}
	human := false
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var convShop, convUser, state string
		if err := tx.QueryRow(ctx, `INSERT INTO conversations (id, shop_id, user_id) VALUES ($1, $2, $3)
			ON CONFLICT (id) DO UPDATE SET updated_at = now()
			RETURNING shop_id, user_id, state`, m.ConversationID, m.ShopID, m.UserID).Scan(&convShop, &convUser, &state); err != nil {
			return err
		}
		if convShop != m.ShopID || convUser != m.UserID {
			return ErrForeignConversation
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)`, m.ID).Scan(&exists); err != nil {
			return err
		}
		if exists {
			existed = true
			return nil
		}
		if peakdesk.ConversationState(state).HumanOwned() {
			// A human agent owns the conversation: the bot says nothing,
			// not even from the FAQ; the message is the agent's.
			human = true
			return storeHumanMessage(ctx, tx, m)
		}
		if err := tx.QueryRow(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source, model)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at`,
			r.ID, r.ShopID, r.ConversationID, r.Text, r.Source, r.Model).Scan(&r.CreatedAt); err != nil {
			return err
		}
		var metadata []byte
		if len(m.Metadata) > 0 {
			metadata = m.Metadata
		}
		_, err := tx.Exec(ctx, `INSERT INTO messages (id, shop_id, conversation_id, user_id, text, channel, priority,
				client_msg_id, metadata, status, reply_id, accepted_at, answered_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'answered', $10, $11, now())`,
			m.ID, m.ShopID, m.ConversationID, m.UserID, m.Text, m.Channel, string(m.Priority),
			clientMsgID, metadata, r.ID, m.AcceptedAt)
		if err != nil {
			return err
		}
		for i := range actions {
			actions[i].ReplyID, actions[i].ConversationID = r.ID, r.ConversationID
		}
		if _, err := InsertActions(ctx, tx, actions); err != nil {
			return err
		}
		if webhook == nil {
			return nil
		}
		a, err := webhook(r)
		if err != nil {
			return err
		}
		_, err = InsertReplyWebhook(ctx, tx, a)
		return err
	})
	switch {
	case errors.Is(err, ErrForeignConversation):
		return nil, false, err
	case isUniqueViolation(err):
		existed = true // a racing copy of the same message got in first
	case err != nil:
		return nil, false, fmt.Errorf("storage: save answered message: %w", err)
	case human:
		return nil, false, ErrHumanOwned
	}
	if !existed {
		r.UserID = m.UserID
		return r, false, nil
	}
	prev, err := db.ReplyFor(ctx, m.ShopID, m.ID)
	if errors.Is(err, ErrNotFound) {
		return nil, true, nil
	}
	if err != nil {
		return nil, true, fmt.Errorf("storage: save answered message: %w", err)
	}
	return prev, true, nil
}
