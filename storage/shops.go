package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// ShopSettings are the per-shop settings the ingest edge needs. Zero request
// limits mean "use the default"; the EdgeLimits are always the shop's own.
type ShopSettings struct {
	ID                string
	RatePerSecond     int
	RateBurst         int
	UserRatePerMinute int
	UserRateBurst     int
	EdgeLimits
	// Admission are the shop's admission thresholds; zero fields: the
	// process settings.
	Admission ShopAdmission
	Rules     []PriorityRule
	// AllowedOrigins are the web origins whose pages may call the chat API
	// for the shop from a browser (CORS), normalized.
	AllowedOrigins []string
}

// EdgeLimits are a shop's abuse limits at the ingest edge (docs/policies.md).
// Each counts per end user: the token's subject, or the user a service
// token names.
type EdgeLimits struct {
	// P0PerUserPerHour is how many messages a customer may get p0 from
	// keywords per hour; beyond it they are p1. 0: keywords never give p0.
	P0PerUserPerHour int
	// ReadPerUserPerMinute limits GETs of messages and conversations and
	// event stream opens. At least 1.
	ReadPerUserPerMinute int
	// SSEStreamsPerUser is how many event streams a customer may hold open
	// on one edge process. 0: polling only.
	SSEStreamsPerUser int
}

// DefaultEdgeLimits are the schema's defaults.
var DefaultEdgeLimits = EdgeLimits{P0PerUserPerHour: 10, ReadPerUserPerMinute: 120, SSEStreamsPerUser: 5}

// PriorityRule is one keyword that gives a message a priority.
type PriorityRule struct {
	Priority peakdesk.Priority
	Keyword  string
}

// ShopSettings returns the settings of shop id, or ErrNotFound.
func (db *DB) ShopSettings(ctx context.Context, id string) (*ShopSettings, error) {
	s := ShopSettings{ID: id}
	var rate, burst, userRate, userBurst, p0, p1, p2, minBacklog *int
	err := db.pool.QueryRow(ctx, `SELECT rate_per_second, rate_burst, user_rate_per_minute, user_rate_burst,
			p0_per_user_per_hour, read_per_user_per_minute, sse_streams_per_user,
			admission_max_wait_p0_ms, admission_max_wait_p1_ms, admission_max_wait_p2_ms, admission_min_backlog,
			allowed_origins
		FROM shops WHERE id = $1`, id).Scan(&rate, &burst, &userRate, &userBurst,
		&s.P0PerUserPerHour, &s.ReadPerUserPerMinute, &s.SSEStreamsPerUser, &p0, &p1, &p2, &minBacklog,
		&s.AllowedOrigins)
	switch {
	case noRows(err):
		return nil, notFound("shop")
	case err != nil:
		return nil, fmt.Errorf("storage: shop settings: %w", err)
	}
	for _, p := range []struct {
		dst *int
		src *int
	}{{&s.RatePerSecond, rate}, {&s.RateBurst, burst}, {&s.UserRatePerMinute, userRate}, {&s.UserRateBurst, userBurst}} {
		if p.src != nil {
			*p.dst = *p.src
		}
	}
	s.Admission = ShopAdmission{MaxWaitP0: millis(p0), MaxWaitP1: millis(p1), MaxWaitP2: millis(p2),
		MinBacklog: deref(minBacklog)}
	rows, err := db.pool.Query(ctx, `SELECT priority, keyword FROM priority_rules
		WHERE shop_id = $1 ORDER BY priority, keyword`, id)
	if err != nil {
		return nil, fmt.Errorf("storage: priority rules: %w", err)
	}
	s.Rules, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (PriorityRule, error) {
		var r PriorityRule
		var p string
		err := row.Scan(&p, &r.Keyword)
		r.Priority = peakdesk.Priority(p)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: priority rules: %w", err)
	}
	return &s, nil
}

// SetPriorityRules replaces shop's priority keywords.
func (db *DB) SetPriorityRules(ctx context.Context, shop string, rules []PriorityRule) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM priority_rules WHERE shop_id = $1`, shop); err != nil {
			return err
		}
		for _, r := range rules {
			if _, err := tx.Exec(ctx, `INSERT INTO priority_rules (shop_id, priority, keyword) VALUES ($1, $2, $3)
				ON CONFLICT DO NOTHING`, shop, string(r.Priority), r.Keyword); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: set priority rules: %w", err)
	}
	return nil
}

// SetShopLimits sets shop's request limits; zero values restore defaults.
func (db *DB) SetShopLimits(ctx context.Context, shop string, ratePerSecond, burst, userPerMinute, userBurst int) error {
	nullable := func(v int) *int {
		if v <= 0 {
			return nil
		}
		return &v
	}
	_, err := db.pool.Exec(ctx, `UPDATE shops SET rate_per_second = $2, rate_burst = $3,
		user_rate_per_minute = $4, user_rate_burst = $5 WHERE id = $1`,
		shop, nullable(ratePerSecond), nullable(burst), nullable(userPerMinute), nullable(userBurst))
	if err != nil {
		return fmt.Errorf("storage: set shop limits: %w", err)
	}
	return nil
}

// SetShopEdgeLimits sets shop's abuse limits at the edge.
func (db *DB) SetShopEdgeLimits(ctx context.Context, shop string, l EdgeLimits) error {
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET p0_per_user_per_hour = $2, read_per_user_per_minute = $3,
		sse_streams_per_user = $4 WHERE id = $1`, shop, l.P0PerUserPerHour, l.ReadPerUserPerMinute, l.SSEStreamsPerUser)
	switch {
	case err != nil:
		return fmt.Errorf("storage: set shop edge limits: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}

// ShopLanguage returns shop's default language of customer texts ("zh" or
// "en"), or ErrNotFound.
func (db *DB) ShopLanguage(ctx context.Context, shop string) (string, error) {
	var lang string
	err := db.pool.QueryRow(ctx, `SELECT language FROM shops WHERE id = $1`, shop).Scan(&lang)
	switch {
	case noRows(err):
		return "", notFound("shop")
	case err != nil:
		return "", fmt.Errorf("storage: shop language: %w", err)
	}
	return lang, nil
}

// SetShopAllowedOrigins sets the web origins whose pages may call the chat
// API for shop from a browser; each must be normalized
// (peakdesk.NormalizeOrigin).
func (db *DB) SetShopAllowedOrigins(ctx context.Context, shop string, origins []string) error {
	for _, o := range origins {
		if n, err := peakdesk.NormalizeOrigin(o); err != nil || n != o {
			return fmt.Errorf("storage: set allowed origins: %q is not a normalized origin", o)
		}
	}
	if origins == nil {
		origins = []string{}
	}
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET allowed_origins = $2 WHERE id = $1`, shop, origins)
	switch {
	case err != nil:
		return fmt.Errorf("storage: set allowed origins: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}

// OriginAllowedAnywhere reports whether some shop allows web origin origin.
// A CORS preflight names no shop (it carries no token), so it is answered
// for the origins any shop allows; the request that follows is checked
// against its own shop. This reads no shop's data but the origin list.
func (db *DB) OriginAllowedAnywhere(ctx context.Context, origin string) (bool, error) {
	var ok bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shops WHERE allowed_origins @> ARRAY[$1]::text[])`,
		origin).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("storage: origin allowed: %w", err)
	}
	return ok, nil
}
