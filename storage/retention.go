package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

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

// RedactTable names a table whose texts expire.
type RedactTable string

// Tables with texts that expire.
const (
	RedactMessages RedactTable = "messages"
	RedactReplies  RedactTable = "replies"
	// RedactWebhooks is the outbox's webhook deliveries (webhook.deliver):
	// a reply.created event carries its reply, a desk event the customer's
	// message, as written. Every JSON member named "text" in the payload
	// of a delivery the relays are done with (succeeded, dead, canceled)
	// is masked.
	RedactWebhooks RedactTable = "outbox_actions"
)

// RedactTables lists every table RedactExpired works on.
var RedactTables = []RedactTable{RedactMessages, RedactReplies, RedactWebhooks}

// redactSQL is how RedactExpired reads the text of a table's expired rows
// and writes its masked form back; $1 is the shop, $2 the days, $3 the
// limit; the update's $2 and $3 are the ids and the masked texts.
type redactSQL struct {
	sel, upd string
	// json: what sel reads is a JSON document whose "text" members are
	// masked (maskPayloadTexts), not one text.
	json bool
}

// textRedaction redacts the text column of table (messages, replies).
func textRedaction(table string) redactSQL {
	return redactSQL{sel: `SELECT id, text FROM ` + table + `
			WHERE shop_id = $1 AND redacted_at IS NULL AND created_at < now() - make_interval(days => $2)
			ORDER BY created_at LIMIT $3
			FOR NO KEY UPDATE SKIP LOCKED`,
		upd: `UPDATE ` + table + ` t SET text = u.text, redacted_at = now()
			FROM unnest($2::text[], $3::text[]) AS u(id, text)
			WHERE t.id = u.id AND t.shop_id = $1 AND t.redacted_at IS NULL`}
}

var redactSQLs = map[RedactTable]redactSQL{
	RedactMessages: textRedaction("messages"),
	RedactReplies:  textRedaction("replies"),
	// Only deliveries the relays are done with: one still due or being
	// delivered (its shop's endpoint down for longer than the retention)
	// goes out as written first, and its row is not held up under a relay
	// finishing an attempt. An operator's retry of a dead one sends the
	// masked texts.
	RedactWebhooks: {sel: `SELECT id::text, payload::text FROM outbox_actions
			WHERE shop_id = $1 AND kind = 'webhook.deliver' AND redacted_at IS NULL
				AND created_at < now() - make_interval(days => $2)
				AND state IN ('succeeded', 'dead', 'canceled')
			ORDER BY created_at LIMIT $3
			FOR NO KEY UPDATE SKIP LOCKED`,
		upd: `UPDATE outbox_actions t SET payload = u.payload::jsonb, redacted_at = now()
			FROM unnest($2::text[], $3::text[]) AS u(id, payload)
			WHERE t.id = u.id::bigint AND t.shop_id = $1 AND t.redacted_at IS NULL`,
		json: true},
}

// maskPayloadTexts masks every string member named "text" of JSON
// document payload, at any depth.
func maskPayloadTexts(payload string, mask func(string) string) (string, error) {
	d := json.NewDecoder(strings.NewReader(payload))
	d.UseNumber() // numbers stay as written
	var v any
	if err := d.Decode(&v); err != nil {
		return "", fmt.Errorf("payload: %w", err)
	}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, m := range v {
				if s, ok := m.(string); ok && k == "text" {
					v[k] = mask(s)
					continue
				}
				walk(m)
			}
		case []any:
			for _, m := range v {
				walk(m)
			}
		}
	}
	walk(v)
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("payload: %w", err)
	}
	return string(b), nil
}

// RedactExpired replaces the text of up to limit rows of table t of shop that
// were stored more than days ago and are not yet redacted with mask(text),
// and marks them redacted (redacted_at), in one transaction; a redacted row
// is never read again. The rows are locked while mask runs, and rows another
// caller has locked are skipped, so concurrent callers (relays) share the
// work without doing it twice. It returns how many rows it redacted: fewer
// than limit means nothing more is due now that this caller may take.
//
// mask must be a pure function of the text; it is called once per text.
func (db *DB) RedactExpired(ctx context.Context, t RedactTable, shop string, days, limit int, mask func(string) string) (int, error) {
	q, ok := redactSQLs[t]
	if !ok {
		return 0, fmt.Errorf("storage: redact: unknown table %q", t)
	}
	var n int
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// FOR NO KEY UPDATE: a worker linking a message to its reply (a
		// KEY SHARE lock on the reply) is not held up.
		rows, err := tx.Query(ctx, q.sel, shop, days, limit)
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
			if q.json {
				if text, err = maskPayloadTexts(text, mask); err != nil {
					rows.Close()
					return fmt.Errorf("row %s: %w", id, err)
				}
			} else {
				text = mask(text)
			}
			ids, texts = append(ids, id), append(texts, text)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		tag, err := tx.Exec(ctx, q.upd, shop, ids, texts)
		n = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("storage: redact expired %s: %w", t, err)
	}
	return n, nil
}
