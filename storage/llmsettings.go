package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// LLMSettings are a shop's own LLM provider settings. Empty fields inherit the
// process-wide default.
type LLMSettings struct {
	ShopID string
	// BaseURL of an OpenAI-compatible API; empty = the default provider.
	BaseURL string
	// APIKey for BaseURL; never logged. Empty = the default key.
	APIKey string
	// Models is the chain to try in order (primary, secondary, ...); empty =
	// the default chain. Read, it holds Chain's models.
	Models []string
	// Chain is the model chain with each model's provider, so that a chain
	// can fail over to another provider. Read, it is always set (from
	// Models when the shop never gave providers). Written, a non-empty
	// Chain is the chain and Models is ignored. At most MaxChain models.
	Chain []LLMModel
	// SystemPrompt replaces the default system message when not empty;
	// "{shop}" in it is replaced by the shop id.
	SystemPrompt string
	// Temperature is sent with every call; nil = the provider's default.
	Temperature *float64
	UpdatedAt   time.Time
}

// LLMModel is one model of a shop's chain and where it is called.
type LLMModel struct {
	Model string
	// BaseURL of the model's provider; empty = the shop's BaseURL, then the
	// default provider.
	BaseURL string
	// APIKey for the model's provider; never logged. Empty = the shop's key
	// when the model has no BaseURL of its own (then: none).
	APIKey string
}

// MaxChain is the longest model chain a shop may have.
const MaxChain = 8

// LogValue keeps the API keys out of logs.
func (s LLMSettings) LogValue() slog.Value {
	chain := make([]string, len(s.Chain))
	for i, m := range s.Chain {
		chain[i] = m.Model + "@" + cmp.Or(m.BaseURL, "shop")
	}
	return slog.GroupValue(slog.String("shop", s.ShopID), slog.String("base_url", s.BaseURL),
		slog.Any("models", s.Models), slog.Any("chain", chain), slog.Bool("has_api_key", s.APIKey != ""))
}

// ShopLLMSettings returns shop's LLM settings, or ErrNotFound when the shop
// uses the defaults.
func (db *DB) ShopLLMSettings(ctx context.Context, shop string) (*LLMSettings, error) {
	var s *LLMSettings
	err := pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			s, err = db.llmSettings(ctx, tx, shop)
			return err
		})
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("storage: shop llm settings: %w", err)
	}
	return s, nil
}

// llmSettings reads shop's LLM settings in tx, secrets opened.
func (db *DB) llmSettings(ctx context.Context, tx pgx.Tx, shop string) (*LLMSettings, error) {
	s := &LLMSettings{}
	err := tx.QueryRow(ctx, `SELECT shop_id, base_url, api_key, models, system_prompt, temperature, updated_at
		FROM shop_llm_settings WHERE shop_id = $1`, shop).
		Scan(&s.ShopID, &s.BaseURL, &s.APIKey, &s.Models, &s.SystemPrompt, &s.Temperature, &s.UpdatedAt)
	switch {
	case noRows(err):
		return nil, notFound("LLM settings")
	case err != nil:
		return nil, err
	}
	if s.APIKey, err = db.open(s.APIKey, whereLLMKey(shop)); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT model, base_url, api_key FROM shop_llm_models
		WHERE shop_id = $1 ORDER BY position`, shop)
	if err != nil {
		return nil, err
	}
	s.Chain, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (LLMModel, error) {
		var m LLMModel
		err := row.Scan(&m.Model, &m.BaseURL, &m.APIKey)
		return m, err
	})
	if err != nil {
		return nil, err
	}
	for i := range s.Chain {
		if s.Chain[i].APIKey, err = db.open(s.Chain[i].APIKey, whereModelKey(shop)); err != nil {
			return nil, err
		}
	}
	if len(s.Chain) == 0 {
		for _, m := range s.Models {
			s.Chain = append(s.Chain, LLMModel{Model: m})
		}
	}
	s.Models = make([]string, len(s.Chain))
	for i, m := range s.Chain {
		s.Models[i] = m.Model
	}
	return s, nil
}

// SetShopLLMSettings stores s for s.ShopID, replacing earlier settings.
func (db *DB) SetShopLLMSettings(ctx context.Context, s LLMSettings) error {
	if err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error { return db.setLLMSettings(ctx, tx, s) }); err != nil {
		if _, ok := errors.AsType[*peakdesk.Error](err); ok {
			return err
		}
		return fmt.Errorf("storage: set shop llm settings: %w", err)
	}
	return nil
}

// setLLMSettings writes s in tx, secrets sealed.
func (db *DB) setLLMSettings(ctx context.Context, tx pgx.Tx, s LLMSettings) error {
	chain := s.Chain
	if len(chain) == 0 {
		for _, m := range s.Models {
			chain = append(chain, LLMModel{Model: m})
		}
	}
	if len(chain) > MaxChain {
		return peakdesk.FieldError("llm.chain", "at most %d models", MaxChain)
	}
	models := make([]string, len(chain))
	for i, m := range chain {
		if m.Model = strings.TrimSpace(m.Model); m.Model == "" || len(m.Model) > 200 {
			return peakdesk.FieldError("llm.chain", "model %d: a model name of 1..200 characters is required", i+1)
		}
		models[i] = m.Model
	}
	if s.Temperature != nil && (*s.Temperature < 0 || *s.Temperature > 2) {
		return peakdesk.FieldError("llm.temperature", "must be within 0..2")
	}
	if len(s.SystemPrompt) > 8000 {
		return peakdesk.FieldError("llm.system_prompt", "at most 8000 bytes")
	}
	key, err := db.seal(s.APIKey, whereLLMKey(s.ShopID))
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO shop_llm_settings (shop_id, base_url, api_key, models, system_prompt,
			temperature)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (shop_id) DO UPDATE SET base_url = EXCLUDED.base_url, api_key = EXCLUDED.api_key,
			models = EXCLUDED.models, system_prompt = EXCLUDED.system_prompt,
			temperature = EXCLUDED.temperature, updated_at = now()`,
		s.ShopID, s.BaseURL, key, models, s.SystemPrompt, s.Temperature); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM shop_llm_models WHERE shop_id = $1`, s.ShopID); err != nil {
		return err
	}
	for i, m := range chain {
		key, err := db.seal(m.APIKey, whereModelKey(s.ShopID))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO shop_llm_models (shop_id, position, model, base_url, api_key)
			VALUES ($1, $2, $3, $4, $5)`, s.ShopID, i, models[i], m.BaseURL, key); err != nil {
			return err
		}
	}
	return nil
}

// LLMLimits are a shop's limits on LLM use, from its row in shops.
type LLMLimits struct {
	ShopID string
	// Currency is the shop's currency (ISO 4217, e.g. "CNY"), the unit of
	// SpendCapPerDayCents.
	Currency string
	// MaxTokens is the completion limit sent with every LLM call.
	MaxTokens int
	// SpendCapPerDayCents caps the LLM spend of one calendar day in
	// Asia/Shanghai, in hundredths of Currency. Nil means no cap.
	SpendCapPerDayCents *int64
	// CallsPerUserPerHour caps the answers one end user gets from the LLM
	// per clock hour. Nil means no cap.
	CallsPerUserPerHour *int
}

// Defaults of the LLM limits of a shop, the same as the columns' defaults.
const (
	DefaultCurrency            = "CNY"
	DefaultLLMMaxTokens        = 400
	DefaultLLMCallsPerUserHour = 60
)

// DefaultLLMLimits returns the limits a new shop gets.
func DefaultLLMLimits(shop string) LLMLimits {
	calls := DefaultLLMCallsPerUserHour
	return LLMLimits{ShopID: shop, Currency: DefaultCurrency, MaxTokens: DefaultLLMMaxTokens,
		CallsPerUserPerHour: &calls}
}

// ShopLLMLimits returns shop's LLM limits, or ErrNotFound when there is no
// such shop.
func (db *DB) ShopLLMLimits(ctx context.Context, shop string) (*LLMLimits, error) {
	l := &LLMLimits{ShopID: shop}
	err := db.pool.QueryRow(ctx, `SELECT currency, llm_max_tokens, llm_spend_cap_per_day_cents,
			llm_calls_per_user_per_hour
		FROM shops WHERE id = $1`, shop).
		Scan(&l.Currency, &l.MaxTokens, &l.SpendCapPerDayCents, &l.CallsPerUserPerHour)
	switch {
	case noRows(err):
		return nil, notFound("shop")
	case err != nil:
		return nil, fmt.Errorf("storage: shop llm limits: %w", err)
	}
	return l, nil
}

// AnswerSettings are what the answerer reads of a shop: its LLM provider
// settings, its LLM limits and its language, read together.
type AnswerSettings struct {
	// LLM is nil when the shop uses the default provider settings.
	LLM    *LLMSettings
	Limits LLMLimits
	// Language is the shop's default language of customer texts.
	Language string
}

// ShopAnswerSettings returns shop's LLM settings, LLM limits and language in
// one read-only transaction (one read of shops instead of one per field
// group), or ErrNotFound when there is no such shop.
func (db *DB) ShopAnswerSettings(ctx context.Context, shop string) (*AnswerSettings, error) {
	var a *AnswerSettings
	err := pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			r := &AnswerSettings{Limits: LLMLimits{ShopID: shop}}
			l := &r.Limits
			err := tx.QueryRow(ctx, `SELECT currency, llm_max_tokens, llm_spend_cap_per_day_cents,
					llm_calls_per_user_per_hour, language
				FROM shops WHERE id = $1`, shop).
				Scan(&l.Currency, &l.MaxTokens, &l.SpendCapPerDayCents, &l.CallsPerUserPerHour, &r.Language)
			switch {
			case noRows(err):
				return notFound("shop")
			case err != nil:
				return err
			}
			r.LLM, err = db.llmSettings(ctx, tx, shop)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			a = r
			return nil
		})
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("storage: shop answer settings: %w", err)
	}
	return a, nil
}

// SetShopLLMLimits stores l for the shop l.ShopID (which must exist: else
// ErrNotFound). Every field is written: nil caps remove the caps, an empty
// Currency or a zero MaxTokens restores the default.
//
// Values out of range are refused with an invalid_argument error naming the
// field (the table's checks would refuse them too).
func (db *DB) SetShopLLMLimits(ctx context.Context, l LLMLimits) error {
	switch {
	case l.Currency != "" && !isCurrencyCode(l.Currency):
		return peakdesk.FieldError("currency", "want an ISO 4217 code like CNY, got %q", l.Currency)
	case l.MaxTokens < 0 || l.MaxTokens > 32768:
		return peakdesk.FieldError("llm_max_tokens", "must be within 1..32768")
	case l.SpendCapPerDayCents != nil && *l.SpendCapPerDayCents < 0:
		return peakdesk.FieldError("llm_spend_cap_per_day_cents", "must not be negative")
	case l.CallsPerUserPerHour != nil && *l.CallsPerUserPerHour < 0:
		return peakdesk.FieldError("llm_calls_per_user_per_hour", "must not be negative")
	}
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET currency = COALESCE(NULLIF($2, ''), 'CNY'),
			llm_max_tokens = COALESCE(NULLIF($3, 0), 400), llm_spend_cap_per_day_cents = $4,
			llm_calls_per_user_per_hour = $5
		WHERE id = $1`, l.ShopID, l.Currency, l.MaxTokens, l.SpendCapPerDayCents, l.CallsPerUserPerHour)
	switch {
	case err != nil:
		return fmt.Errorf("storage: set shop llm limits: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}

func isCurrencyCode(s string) bool {
	if len(s) != 3 {
		return false
	}
	for _, r := range s {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

// PIIAudit is the audit record of one answer: how many values of each kind
// of personal data were masked (keys "phone", "id_card", "bank_card",
// "email"). The values themselves are never stored.
type PIIAudit struct {
	ShopID         string
	ConversationID string
	// MessageIDs are the messages answered; the first one keys the record.
	MessageIDs []string
	Counts     map[string]int
	CreatedAt  time.Time
}

// RecordPIIAudit stores a. A second record for the same first message (a
// redelivery answered again) replaces the first. Records without message ids
// or without any masking are not stored.
func (db *DB) RecordPIIAudit(ctx context.Context, a PIIAudit) error {
	if len(a.MessageIDs) == 0 || len(a.Counts) == 0 {
		return nil
	}
	_, err := db.pool.Exec(ctx, `INSERT INTO pii_audit (shop_id, message_id, conversation_id, message_ids,
			phone, id_card, bank_card, email)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (shop_id, message_id) DO UPDATE SET conversation_id = EXCLUDED.conversation_id,
			message_ids = EXCLUDED.message_ids, phone = EXCLUDED.phone, id_card = EXCLUDED.id_card,
			bank_card = EXCLUDED.bank_card, email = EXCLUDED.email, created_at = now()`,
		a.ShopID, a.MessageIDs[0], a.ConversationID, a.MessageIDs,
		a.Counts["phone"], a.Counts["id_card"], a.Counts["bank_card"], a.Counts["email"])
	if err != nil {
		return fmt.Errorf("storage: record pii audit: %w", err)
	}
	return nil
}

// PIIAudits returns shop's audit records for the given first message id
// (empty = all), newest first, at most limit (≤ 0 = 100).
func (db *DB) PIIAudits(ctx context.Context, shop, messageID string, limit int) ([]PIIAudit, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := db.pool.Query(ctx, `SELECT shop_id, conversation_id, message_ids, phone, id_card, bank_card,
			email, created_at
		FROM pii_audit WHERE shop_id = $1 AND ($2 = '' OR message_id = $2)
		ORDER BY created_at DESC LIMIT $3`, shop, messageID, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: pii audits: %w", err)
	}
	defer rows.Close()
	var out []PIIAudit
	for rows.Next() {
		var a PIIAudit
		var phone, id, card, email int
		if err := rows.Scan(&a.ShopID, &a.ConversationID, &a.MessageIDs, &phone, &id, &card, &email,
			&a.CreatedAt); err != nil {
			return nil, fmt.Errorf("storage: pii audits: %w", err)
		}
		a.Counts = map[string]int{}
		for k, v := range map[string]int{"phone": phone, "id_card": id, "bank_card": card, "email": email} {
			if v > 0 {
				a.Counts[k] = v
			}
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: pii audits: %w", err)
	}
	return out, nil
}
