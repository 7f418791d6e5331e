package storage

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/peakdesk/peakdesk"
)

// Shop administration (docs/integration.md): a shop's whole configuration read
// and written at once, in one transaction with the audit record of the
// change. Every write notifies SettingsChannel (triggers of migration 15),
// so every process drops what it cached of the shop.

// SettingsChannel is the LISTEN/NOTIFY channel that carries the id of a shop
// whose settings changed.
const SettingsChannel = "peakdesk_settings"

// ShopConfig is everything a shop is run by. Zero request limits and
// admission thresholds mean "the process default".
type ShopConfig struct {
	ID   string
	Name string
	// Language is the shop's default language of customer texts: zh or en.
	Language string
	// Currency is the unit of the shop's money settings (ISO 4217).
	Currency      string
	RetentionDays int
	CreatedAt     time.Time

	Limits    ShopLimits
	Edge      EdgeLimits
	Admission ShopAdmission
	Rules     []PriorityRule
	// LLM is the shop's provider and model chain (zero: the defaults).
	LLM LLMSettings
	// LLMLimits are the shop's limits on LLM use; its Currency is ignored
	// (Currency above is the shop's).
	LLMLimits LLMLimits
	// API is how peakdesk reaches the shop's systems and webhook.
	API     ShopAPISettings
	Coupons CouponPolicy
	// Takeover is when and how customers reach a human agent.
	Takeover TakeoverSettings
	// OrderAnswers is how order questions are answered: OrderAnswersLLM or
	// OrderAnswersDirect.
	OrderAnswers string
}

// ShopLimits are a shop's request limits at the edge (Redis GCRA); zero =
// the process default.
type ShopLimits struct {
	RatePerSecond, RateBurst, UserRatePerMinute, UserRateBurst int
}

// ShopAdmission are a shop's admission thresholds (when the edge sheds its
// messages); zero = the process setting.
type ShopAdmission struct {
	MaxWaitP0, MaxWaitP1, MaxWaitP2 time.Duration
	MinBacklog                      int
}

// ShopSummary is a shop in a list.
type ShopSummary struct {
	ID, Name, Language, Currency string
	CreatedAt                    time.Time
}

// ErrShopExists is returned by CreateShop for an id that is taken.
var ErrShopExists = &peakdesk.Error{Code: peakdesk.EInvalid, Field: "id", Message: "a shop with this id exists"}

// Shops returns up to limit shops with ids after `after`, in id order.
func (db *DB) Shops(ctx context.Context, after string, limit int) ([]ShopSummary, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, name, language, currency, created_at FROM shops
		WHERE id > $1 ORDER BY id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: shops: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ShopSummary, error) {
		var s ShopSummary
		err := row.Scan(&s.ID, &s.Name, &s.Language, &s.Currency, &s.CreatedAt)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: shops: %w", err)
	}
	return out, nil
}

// ShopConfig returns shop's whole configuration, secrets opened, or
// ErrNotFound.
func (db *DB) ShopConfig(ctx context.Context, shop string) (*ShopConfig, error) {
	var c *ShopConfig
	err := pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			c, err = db.readShopConfig(ctx, tx, shop, false)
			return err
		})
	if err != nil {
		return nil, shopConfigError("shop config", err)
	}
	return c, nil
}

// CreateShop stores c as a new shop with the audit record e, in one
// transaction. A shop without a webhook secret gets one (c.API.WebhookSecret
// is set to it). ErrShopExists if the id is taken.
func (db *DB) CreateShop(ctx context.Context, c *ShopConfig, e *AuditEntry) error {
	if c.API.WebhookSecret == "" {
		var b [32]byte
		_, _ = rand.Read(b[:])
		c.API.WebhookSecret = hex.EncodeToString(b[:])
	}
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO shops (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, c.ID, c.Name)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrShopExists
		}
		var created time.Time
		if err := tx.QueryRow(ctx, `SELECT created_at FROM shops WHERE id = $1`, c.ID).Scan(&created); err != nil {
			return err
		}
		c.CreatedAt = created
		if err := db.writeShopConfig(ctx, tx, c, true); err != nil {
			return err
		}
		return InsertAudit(ctx, tx, e)
	})
	return shopConfigError("create shop", err)
}

// UpdateShop changes shop's configuration in one transaction that holds
// the shop's row: change gets the configuration as stored (secrets opened),
// changes it in place and returns the audit record of the change, or nil
// when nothing changed (then nothing is written). An error from change
// rolls everything back and is returned as it is. ErrNotFound if there is no
// such shop.
func (db *DB) UpdateShop(ctx context.Context, shop string, change func(c *ShopConfig) (*AuditEntry, error)) (*ShopConfig, error) {
	var c *ShopConfig
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if c, err = db.readShopConfig(ctx, tx, shop, true); err != nil {
			return err
		}
		e, err := change(c)
		if err != nil || e == nil {
			return err
		}
		c.ID = shop
		if err := db.writeShopConfig(ctx, tx, c, false); err != nil {
			return err
		}
		return InsertAudit(ctx, tx, e)
	})
	if err != nil {
		return nil, shopConfigError("update shop", err)
	}
	return c, nil
}

// shopConfigError passes coded errors on as they are and names the check
// a value broke.
func shopConfigError(op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*peakdesk.Error](err); ok {
		return err
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "23514" {
		return peakdesk.Errorf(peakdesk.EInvalid, "a value is out of its range (%s)", pgErr.ConstraintName)
	}
	if noRows(err) {
		return notFound("shop")
	}
	return fmt.Errorf("storage: %s: %w", op, err)
}

// readShopConfig reads shop's configuration in tx (locking the shop's row
// when lock is set).
func (db *DB) readShopConfig(ctx context.Context, tx pgx.Tx, shop string, lock bool) (*ShopConfig, error) {
	c := &ShopConfig{ID: shop}
	var rate, burst, userRate, userBurst, p0, p1, p2, minBacklog *int
	var slaSecs float64
	q := `SELECT name, language, currency, retention_days, created_at,
			rate_per_second, rate_burst, user_rate_per_minute, user_rate_burst,
			p0_per_user_per_hour, read_per_user_per_minute, sse_streams_per_user,
			admission_max_wait_p0_ms, admission_max_wait_p1_ms, admission_max_wait_p2_ms, admission_min_backlog,
			llm_max_tokens, llm_spend_cap_per_day_cents, llm_calls_per_user_per_hour,
			coupon_per_user_per_day, coupon_budget_per_day_cents,
			extract(epoch FROM handoff_sla)::float8, handoff_keywords, order_answers
		FROM shops WHERE id = $1`
	if lock {
		q += ` FOR UPDATE`
	}
	err := tx.QueryRow(ctx, q, shop).Scan(&c.Name, &c.Language, &c.Currency, &c.RetentionDays, &c.CreatedAt,
		&rate, &burst, &userRate, &userBurst,
		&c.Edge.P0PerUserPerHour, &c.Edge.ReadPerUserPerMinute, &c.Edge.SSEStreamsPerUser,
		&p0, &p1, &p2, &minBacklog,
		&c.LLMLimits.MaxTokens, &c.LLMLimits.SpendCapPerDayCents, &c.LLMLimits.CallsPerUserPerHour,
		&c.Coupons.PerUserPerDay, &c.Coupons.BudgetPerDayCents,
		&slaSecs, &c.Takeover.Keywords, &c.OrderAnswers)
	if noRows(err) {
		return nil, notFound("shop")
	}
	if err != nil {
		return nil, err
	}
	c.LLMLimits.ShopID, c.LLMLimits.Currency = shop, c.Currency
	c.Takeover.SLA = time.Duration(slaSecs * float64(time.Second))
	c.Limits = ShopLimits{RatePerSecond: deref(rate), RateBurst: deref(burst), UserRatePerMinute: deref(userRate),
		UserRateBurst: deref(userBurst)}
	c.Admission = ShopAdmission{MaxWaitP0: millis(p0), MaxWaitP1: millis(p1), MaxWaitP2: millis(p2),
		MinBacklog: deref(minBacklog)}

	rows, err := tx.Query(ctx, `SELECT priority, keyword FROM priority_rules WHERE shop_id = $1
		ORDER BY priority, keyword`, shop)
	if err != nil {
		return nil, err
	}
	c.Rules, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (PriorityRule, error) {
		var r PriorityRule
		var p string
		err := row.Scan(&p, &r.Keyword)
		r.Priority = peakdesk.Priority(p)
		return r, err
	})
	if err != nil {
		return nil, err
	}

	llm, err := db.llmSettings(ctx, tx, shop)
	switch {
	case errors.Is(err, ErrNotFound):
		c.LLM = LLMSettings{ShopID: shop}
	case err != nil:
		return nil, err
	default:
		c.LLM = *llm
	}

	c.API = ShopAPISettings{ShopID: shop}
	err = tx.QueryRow(ctx, `SELECT base_url, secret, webhook_url, webhook_secret, coupon_max_cents, refund_max_cents
		FROM shop_api_settings WHERE shop_id = $1`, shop).Scan(
		&c.API.BaseURL, &c.API.Secret, &c.API.WebhookURL, &c.API.WebhookSecret, &c.API.CouponMaxCents,
		&c.API.RefundMaxCents)
	if err != nil && !noRows(err) {
		return nil, err
	}
	if err := db.openAPISecrets(&c.API); err != nil {
		return nil, err
	}
	return c, nil
}

// writeShopConfig writes c (whose shops row exists) in tx, secrets sealed.
// created says the shop is new: it has no LLM settings row to keep.
func (db *DB) writeShopConfig(ctx context.Context, tx pgx.Tx, c *ShopConfig, created bool) error {
	// Zero values are the defaults, as for the other settings.
	c.Takeover.SLA = cmp.Or(c.Takeover.SLA, DefaultHandoffSLA)
	c.OrderAnswers = cmp.Or(c.OrderAnswers, OrderAnswersLLM)
	takeover, err := c.Takeover.normalized()
	if err != nil {
		return err
	}
	c.Takeover = takeover
	if err := validOrderAnswers(c.OrderAnswers); err != nil {
		return err
	}
	nullable := func(v int) *int {
		if v <= 0 {
			return nil
		}
		return &v
	}
	ms := func(d time.Duration) *int {
		if d <= 0 {
			return nil
		}
		v := int(d.Milliseconds())
		return &v
	}
	_, err = tx.Exec(ctx, `UPDATE shops SET name = $2, language = $3, currency = $4, retention_days = $5,
			rate_per_second = $6, rate_burst = $7, user_rate_per_minute = $8, user_rate_burst = $9,
			p0_per_user_per_hour = $10, read_per_user_per_minute = $11, sse_streams_per_user = $12,
			admission_max_wait_p0_ms = $13, admission_max_wait_p1_ms = $14, admission_max_wait_p2_ms = $15,
			admission_min_backlog = $16,
			llm_max_tokens = $17, llm_spend_cap_per_day_cents = $18, llm_calls_per_user_per_hour = $19,
			coupon_per_user_per_day = $20, coupon_budget_per_day_cents = $21,
			handoff_sla = $22::interval, handoff_keywords = $23, order_answers = $24
		WHERE id = $1`,
		c.ID, c.Name, c.Language, c.Currency, c.RetentionDays,
		nullable(c.Limits.RatePerSecond), nullable(c.Limits.RateBurst), nullable(c.Limits.UserRatePerMinute),
		nullable(c.Limits.UserRateBurst),
		c.Edge.P0PerUserPerHour, c.Edge.ReadPerUserPerMinute, c.Edge.SSEStreamsPerUser,
		ms(c.Admission.MaxWaitP0), ms(c.Admission.MaxWaitP1), ms(c.Admission.MaxWaitP2), nullable(c.Admission.MinBacklog),
		c.LLMLimits.MaxTokens, c.LLMLimits.SpendCapPerDayCents, c.LLMLimits.CallsPerUserPerHour,
		c.Coupons.PerUserPerDay, c.Coupons.BudgetPerDayCents,
		c.Takeover.SLA, c.Takeover.Keywords, c.OrderAnswers)
	if err != nil {
		return err
	}

	if _, err := tx.Exec(ctx, `DELETE FROM priority_rules WHERE shop_id = $1`, c.ID); err != nil {
		return err
	}
	for _, r := range c.Rules {
		if _, err := tx.Exec(ctx, `INSERT INTO priority_rules (shop_id, priority, keyword) VALUES ($1, $2, $3)
			ON CONFLICT DO NOTHING`, c.ID, string(r.Priority), r.Keyword); err != nil {
			return err
		}
	}

	c.LLM.ShopID = c.ID
	if !created || !c.LLM.isDefault() {
		if err := db.setLLMSettings(ctx, tx, c.LLM); err != nil {
			return err
		}
	}

	secret, err := db.seal(c.API.Secret, whereAPISecret(c.ID))
	if err != nil {
		return err
	}
	webhookSecret, err := db.seal(c.API.WebhookSecret, whereWebhookSecret(c.ID))
	if err != nil {
		return err
	}
	if webhookSecret == "" {
		return peakdesk.FieldError("webhook.secret", "a shop's webhook secret can be replaced, never removed")
	}
	_, err = tx.Exec(ctx, `INSERT INTO shop_api_settings (shop_id, base_url, secret, webhook_url, webhook_secret,
			coupon_max_cents, refund_max_cents)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (shop_id) DO UPDATE SET base_url = EXCLUDED.base_url, secret = EXCLUDED.secret,
			webhook_url = EXCLUDED.webhook_url, webhook_secret = EXCLUDED.webhook_secret,
			coupon_max_cents = EXCLUDED.coupon_max_cents, refund_max_cents = EXCLUDED.refund_max_cents,
			updated_at = now()`,
		c.ID, c.API.BaseURL, secret, c.API.WebhookURL, webhookSecret, c.API.CouponMaxCents, c.API.RefundMaxCents)
	return err
}

// isDefault reports whether s says nothing a shop without settings does not.
func (s LLMSettings) isDefault() bool {
	return s.BaseURL == "" && s.APIKey == "" && len(s.Models) == 0 && len(s.Chain) == 0 && s.SystemPrompt == "" &&
		s.Temperature == nil
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

func millis(p *int) time.Duration {
	if p == nil {
		return 0
	}
	return time.Duration(*p) * time.Millisecond
}

// SettingsListener receives the shop settings notifications on a connection
// of its own. It is not safe for concurrent use.
type SettingsListener struct {
	conn *pgx.Conn
}

// ListenSettings opens a dedicated connection that listens on
// SettingsChannel.
func (db *DB) ListenSettings(ctx context.Context) (*SettingsListener, error) {
	conn, err := db.listen(ctx, SettingsChannel)
	if err != nil {
		return nil, fmt.Errorf("storage: listen settings: %w", err)
	}
	return &SettingsListener{conn: conn}, nil
}

// Next returns the id of the next shop whose settings changed. It fails
// when ctx ends or the connection does (then Close it and listen again:
// what changed meanwhile was missed).
func (l *SettingsListener) Next(ctx context.Context) (string, error) {
	n, err := l.conn.WaitForNotification(ctx)
	if err != nil {
		return "", fmt.Errorf("storage: wait for settings: %w", err)
	}
	return n.Payload, nil
}

// Close closes the listening connection.
func (l *SettingsListener) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}
