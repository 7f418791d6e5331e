package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/peakdesk/peakdesk"
)

// Order answers: how a shop wants order and logistics questions answered.
const (
	// OrderAnswersLLM lets the LLM answer them with its tools; the shop's
	// data answers them directly only when the LLM cannot (the default).
	OrderAnswersLLM = "llm"
	// OrderAnswersDirect answers them from the shop's data always, without
	// the LLM.
	OrderAnswersDirect = "direct"
)

// ShopOrderAnswers returns shop's order_answers setting (OrderAnswersLLM
// for a shop that does not exist).
func (db *DB) ShopOrderAnswers(ctx context.Context, shop string) (string, error) {
	mode := OrderAnswersLLM
	err := db.pool.QueryRow(ctx, `SELECT order_answers FROM shops WHERE id = $1`, shop).Scan(&mode)
	if err != nil && !noRows(err) {
		return mode, fmt.Errorf("storage: shop order answers: %w", err)
	}
	return mode, nil
}

// validOrderAnswers checks an order_answers setting.
func validOrderAnswers(mode string) error {
	if mode != OrderAnswersLLM && mode != OrderAnswersDirect {
		return peakdesk.FieldError("order_answers", "order_answers must be %s or %s", OrderAnswersLLM, OrderAnswersDirect)
	}
	return nil
}

// SetShopOrderAnswers sets shop's order_answers setting: OrderAnswersLLM or
// OrderAnswersDirect (else invalid_argument); ErrNotFound for no such shop.
func (db *DB) SetShopOrderAnswers(ctx context.Context, shop, mode string) error {
	if err := validOrderAnswers(mode); err != nil {
		return err
	}
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET order_answers = $2 WHERE id = $1`, shop, mode)
	switch {
	case err != nil:
		return fmt.Errorf("storage: set shop order answers: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}

// ShopText is a shop's own wording of one customer text (workers/texts):
// a text/template template in one language. Validate it with
// texts.Validate before PutShopText stores it.
type ShopText struct {
	ShopID    string
	Lang      string
	Key       string
	Template  string
	UpdatedAt time.Time
}

// ShopTexts returns shop's own texts, by language and key.
func (db *DB) ShopTexts(ctx context.Context, shop string) ([]ShopText, error) {
	rows, err := db.pool.Query(ctx, `SELECT shop_id, lang, key, template, updated_at FROM shop_texts
		WHERE shop_id = $1 ORDER BY lang, key`, shop)
	if err != nil {
		return nil, fmt.Errorf("storage: shop texts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ShopText, error) {
		var t ShopText
		err := row.Scan(&t.ShopID, &t.Lang, &t.Key, &t.Template, &t.UpdatedAt)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: shop texts: %w", err)
	}
	return out, nil
}

// PutShopText stores t, replacing the shop's earlier wording of the same
// key and language. ErrNotFound for no such shop; the table's checks
// refuse an unknown language, a malformed key or an empty or overlong
// template (validate templates first: texts.Validate names the problem).
func (db *DB) PutShopText(ctx context.Context, t ShopText) error {
	tag, err := db.pool.Exec(ctx, `INSERT INTO shop_texts (shop_id, lang, key, template)
		SELECT id, $2, $3, $4 FROM shops WHERE id = $1
		ON CONFLICT (shop_id, lang, key) DO UPDATE SET template = EXCLUDED.template, updated_at = now()`,
		t.ShopID, t.Lang, t.Key, t.Template)
	switch {
	case isCheckViolation(err):
		return peakdesk.FieldError("template", "the text is not valid: %v", err)
	case err != nil:
		return fmt.Errorf("storage: put shop text: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}

// DeleteShopText removes the shop's wording of key in lang (the built-in
// text applies again); it reports whether there was one.
func (db *DB) DeleteShopText(ctx context.Context, shop, lang, key string) (bool, error) {
	tag, err := db.pool.Exec(ctx, `DELETE FROM shop_texts WHERE shop_id = $1 AND lang = $2 AND key = $3`,
		shop, lang, key)
	if err != nil {
		return false, fmt.Errorf("storage: delete shop text: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

func isCheckViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23514"
}

// HurryFollowUps makes shop's order follow-ups that wait for a retry due at
// now (the shop answers again) and returns how many it moved.
func (db *DB) HurryFollowUps(ctx context.Context, shop string, now time.Time) (int64, error) {
	tag, err := db.pool.Exec(ctx, `UPDATE outbox_actions SET next_attempt_at = $2, updated_at = now()
		WHERE shop_id = $1 AND kind = 'order.followup' AND state = 'retrying' AND next_attempt_at > $2`, shop, now)
	if err != nil {
		return 0, fmt.Errorf("storage: hurry follow-ups: %w", err)
	}
	return tag.RowsAffected(), nil
}
