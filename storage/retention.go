package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// Retention limits (shops.retention_days).
const (
	DefaultRetentionDays = 30
	MaxRetentionDays     = 3650
)

// ShopRetention is how many days a shop keeps its chat texts as written.
type ShopRetention struct {
	ShopID string
	Days   int
}

// ShopRetentions returns the retention of every shop, in shop order.
func (db *DB) ShopRetentions(ctx context.Context) ([]ShopRetention, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, retention_days FROM shops ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("storage: shop retentions: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ShopRetention, error) {
		var r ShopRetention
		err := row.Scan(&r.ShopID, &r.Days)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: shop retentions: %w", err)
	}
	return out, nil
}

// SetShopRetention sets how many days shop keeps chat texts as written
// (1..MaxRetentionDays); ErrNotFound for an unknown shop.
func (db *DB) SetShopRetention(ctx context.Context, shop string, days int) error {
	if days < 1 || days > MaxRetentionDays {
		return peakdesk.FieldError("retention_days", "must be between 1 and %d days", MaxRetentionDays)
	}
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET retention_days = $2 WHERE id = $1`, shop, days)
	if err != nil {
		return fmt.Errorf("storage: set shop retention: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return notFound("shop")
	}
	return nil
}

// RedactTable names a table whose texts expire: messages or replies.
type RedactTable string

// Tables with texts that expire.
const (
	RedactMessages RedactTable = "messages"
	RedactReplies  RedactTable = "replies"
)

// RedactTables lists every table RedactExpired works on.
var RedactTables = []RedactTable{RedactMessages, RedactReplies}

// RedactExpired replaces the text of up to limit rows of table t of shop that
// were stored more than days ago and are not yet redacted with mask(text),
// and marks them redacted (redacted_at), in one transaction; a redacted row
// is never read again. The rows are locked while mask runs, and rows another
// caller has locked are skipped, so concurrent callers (relays) share the
// work without doing it twice. It returns how many rows it redacted: fewer
// than limit means nothing more is due now that this caller may take.
//
// mask must be a pure function of the text; it is called once per row.
func (db *DB) RedactExpired(ctx context.Context, t RedactTable, shop string, days, limit int, mask func(string) string) (int, error) {
	if t != RedactMessages && t != RedactReplies {
		return 0, fmt.Errorf("storage: redact: unknown table %q", t)
	}
	table := pgx.Identifier{string(t)}.Sanitize()
	var n int
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// FOR NO KEY UPDATE: a worker linking a message to its reply (a
		// KEY SHARE lock on the reply) is not held up.
		rows, err := tx.Query(ctx, `SELECT id, text FROM `+table+`
			WHERE shop_id = $1 AND redacted_at IS NULL AND created_at < now() - make_interval(days => $2)
			ORDER BY created_at LIMIT $3
			FOR NO KEY UPDATE SKIP LOCKED`, shop, days, limit)
		if err != nil {
			return err
		}
		var ids, texts []string
		for rows.Next() {
			var id, text string
			if err := rows.Scan(&id, &text); err != nil {
				rows.Close()
				return err
			}
			ids, texts = append(ids, id), append(texts, mask(text))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		tag, err := tx.Exec(ctx, `UPDATE `+table+` t SET text = u.text, redacted_at = now()
			FROM unnest($2::text[], $3::text[]) AS u(id, text)
			WHERE t.id = u.id AND t.shop_id = $1 AND t.redacted_at IS NULL`, shop, ids, texts)
		n = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("storage: redact expired %s: %w", t, err)
	}
	return n, nil
}
