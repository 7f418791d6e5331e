package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// SaveFollowUp stores a reply that answers no single message (an order
// follow-up, a handoff notice) together with its webhook action, built by
// webhook from the stored reply (nil: none), in one transaction. The reply id is derived by the caller from what caused it, so
// a repeat stores nothing and reports stored = false. With handoff set, the
// conversation is marked for a human.
func (db *DB) SaveFollowUp(ctx context.Context, r *peakdesk.Reply, webhook func(*peakdesk.Reply) (peakdesk.Action, error), handoff bool) (stored bool, err error) {
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO replies (id, shop_id, conversation_id, text, source, model)
			SELECT $1, $2, $3, $4, $5, $6
			WHERE EXISTS (SELECT 1 FROM conversations WHERE id = $3 AND shop_id = $2)
			ON CONFLICT (id) DO NOTHING
			RETURNING created_at`,
			r.ID, r.ShopID, r.ConversationID, r.Text, r.Source, r.Model).Scan(&r.CreatedAt)
		if noRows(err) {
			return nil // a repeat, or a conversation not of this shop
		}
		if err != nil {
			return err
		}
		stored = true
		if handoff {
			if err := MarkHandoff(ctx, tx, r.ShopID, r.ConversationID); err != nil {
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

// MarkHandoff marks conversation conv of shop for a human agent, in tx (the
// transaction of the reply that hands it over).
func MarkHandoff(ctx context.Context, tx pgx.Tx, shop, conv string) error {
	_, err := tx.Exec(ctx, `UPDATE conversations SET handoff = true, updated_at = now()
		WHERE id = $1 AND shop_id = $2`, conv, shop)
	if err != nil {
		return fmt.Errorf("storage: mark handoff: %w", err)
	}
	return nil
}
