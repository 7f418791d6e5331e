package outbox

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage/coalesce"
)

// LookupsConfig configures Lookups. Shop is required.
type LookupsConfig struct {
	Shop *shopapi.Client
	// Redis coalesces lookups across processes and caches their results;
	// nil coalesces within the process only and caches nothing.
	Redis *redis.Client
	// CacheTTL is how long a lookup's result answers further customers.
	// Default 30 s.
	CacheTTL time.Duration
	// FailureTTL is how long a failed lookup (the shop down or slow)
	// answers other processes' customers at once instead of asking again.
	// Default 1 s.
	FailureTTL time.Duration
	// Timeout bounds one lookup at the shop, whoever waits for it.
	// Default 10 s.
	Timeout time.Duration
	// KeyPrefix starts the Redis keys. Default "pd:".
	KeyPrefix string
	// Registerer receives peakdesk_order_lookups_total; default a private
	// registry.
	Registerer prometheus.Registerer
}

// Lookups reads orders, parcels, customers' recent orders and refunds from
// shops, once for many customers: lookups of the same shop and order (or
// customer, or tracking number) are coalesced across processes and their
// results cached for CacheTTL (storage/coalesce). A customer is answered only
// about their own orders: callers check Order.UserID. It is safe for
// concurrent use.
type Lookups struct {
	cfg    LookupsConfig
	group  *coalesce.Group
	counts *prometheus.CounterVec
}

// NewLookups returns Lookups for cfg.
func NewLookups(cfg LookupsConfig) (*Lookups, error) {
	if cfg.Shop == nil {
		return nil, errors.New("outbox: lookups config: Shop is required")
	}
	cfg.CacheTTL = cmp.Or(cfg.CacheTTL, 30*time.Second)
	cfg.FailureTTL = cmp.Or(cfg.FailureTTL, time.Second)
	cfg.Timeout = cmp.Or(cfg.Timeout, 10*time.Second)
	cfg.KeyPrefix = cmp.Or(cfg.KeyPrefix, "pd:")
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.CacheTTL < 0 || cfg.FailureTTL < 0 {
		return nil, errors.New("outbox: lookups config: CacheTTL and FailureTTL must not be negative")
	}
	counts, err := registerShared(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peakdesk_order_lookups_total",
		Help: "Order lookups by what was looked up (order, orders, tracking, refunds) and how each caller got its answer: ran (asked the shop), joined (another caller of the process asked), cached, followed (another process asked), failed.",
	}, []string{"kind", "outcome"}))
	if err != nil {
		return nil, fmt.Errorf("outbox: lookups metrics: %w", err)
	}
	return &Lookups{cfg: cfg, counts: counts,
		group: coalesce.New(coalesce.Config{Redis: cfg.Redis, Prefix: cfg.KeyPrefix + "ord:", Timeout: cfg.Timeout,
			FailureTTL: cfg.FailureTTL})}, nil
}

// registerShared registers c, or returns the collector registered under
// the same name before (Tools and Relay of one process share metrics).
func registerShared[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// Wait waits for lookups still running for callers that stopped waiting.
func (l *Lookups) Wait() { l.group.Wait() }

// OrderLookup is an order and its parcel as a lookup found them.
type OrderLookup struct {
	// Found is false when the shop does not know the order (4xx).
	Found     bool               `json:"found"`
	Order     *shopapi.Order     `json:"order,omitempty"`
	Logistics *shopapi.Logistics `json:"logistics,omitempty"`
}

// do runs one coalesced lookup of kind and key, decoding the shared result
// into v.
func (l *Lookups) do(ctx context.Context, kind, key string, v any, fn func(ctx context.Context) (any, error)) error {
	raw, outcome, err := l.group.Do(ctx, kind+":"+key, func(ctx context.Context) ([]byte, time.Duration, error) {
		res, err := fn(ctx)
		if err != nil {
			return nil, 0, err
		}
		b, err := json.Marshal(res)
		return b, l.cfg.CacheTTL, err
	})
	if err != nil {
		l.counts.WithLabelValues(kind, "failed").Inc()
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", shopapi.ErrUnavailable, err)
		}
		return err
	}
	l.counts.WithLabelValues(kind, outcome).Inc()
	return json.Unmarshal(raw, v)
}

// gone reports whether err is the shop's final "no such thing" (a 4xx).
func gone(err error) bool {
	se, ok := errors.AsType[*shopapi.Error](err)
	return ok && !se.Transient()
}

// Order looks order id of shop up with its parcel. An order the shop does
// not know is Found false; an error means the shop did not answer (or
// answered with a transient failure) in time.
func (l *Lookups) Order(ctx context.Context, shop, id string) (OrderLookup, error) {
	var f OrderLookup
	err := l.do(ctx, "order", shop+":"+id, &f, func(ctx context.Context) (any, error) {
		o, err := l.cfg.Shop.Order(ctx, shop, id, "")
		switch {
		case gone(err):
			return OrderLookup{}, nil
		case err != nil:
			return nil, err
		}
		lg, err := l.cfg.Shop.Logistics(ctx, shop, id, "")
		switch {
		case gone(err):
			lg = nil // not shipped, or a shop that keeps no parcel for it
		case err != nil:
			return nil, err
		}
		return OrderLookup{Found: true, Order: o, Logistics: lg}, nil
	})
	return f, err
}

// OrdersOfUser returns user's recent orders at shop, newest first.
func (l *Lookups) OrdersOfUser(ctx context.Context, shop, user string, limit int) ([]shopapi.Order, error) {
	var out []shopapi.Order
	err := l.do(ctx, "orders", fmt.Sprintf("%s:%d:%s", shop, limit, user), &out, func(ctx context.Context) (any, error) {
		return l.cfg.Shop.OrdersOfUser(ctx, shop, user, limit)
	})
	return out, err
}

// ByTracking returns the orders whose parcel has tracking number t.
func (l *Lookups) ByTracking(ctx context.Context, shop, t string) ([]shopapi.Order, error) {
	var out []shopapi.Order
	err := l.do(ctx, "tracking", shop+":"+t, &out, func(ctx context.Context) (any, error) {
		orders, err := l.cfg.Shop.OrdersByTracking(ctx, shop, t)
		if gone(err) {
			return []shopapi.Order{}, nil
		}
		return orders, err
	})
	return out, err
}

// refundsResult is a cached refunds lookup.
type refundsResult struct {
	Found   bool             `json:"found"`
	Refunds []shopapi.Refund `json:"refunds"`
}

// Refunds returns the refunds of order id of shop, oldest first; found is
// false when the shop does not know the order.
func (l *Lookups) Refunds(ctx context.Context, shop, id string) (refunds []shopapi.Refund, found bool, err error) {
	var r refundsResult
	err = l.do(ctx, "refunds", shop+":"+id, &r, func(ctx context.Context) (any, error) {
		refunds, err := l.cfg.Shop.Refunds(ctx, shop, id)
		switch {
		case gone(err):
			return refundsResult{}, nil
		case err != nil:
			return nil, err
		}
		return refundsResult{Found: true, Refunds: refunds}, nil
	})
	return r.Refunds, r.Found, err
}
