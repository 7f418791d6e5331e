package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Money grants (docs/policies.md). A tool that promises money — a coupon, a
// refund — first takes a grant in a short transaction of its own; the
// reply's transaction confirms it together with the outbox action that
// carries it out (InsertActions). The policies are enforced here, by
// Postgres, and cannot be raced: one live refund and one live coupon per
// order (unique indexes), coupons per customer per 24 hours and coupon value
// per shop per day (counted under a per-shop transaction lock). A grant
// nobody confirms lapses after its lease; one whose action ends dead or
// canceled stops counting (a trigger), since nothing was given.

// GrantKind is what a grant promises.
type GrantKind string

// Grant kinds.
const (
	GrantCoupon GrantKind = "coupon"
	GrantRefund GrantKind = "refund"
)

// GrantRequest asks for a grant.
type GrantRequest struct {
	Shop           string
	Kind           GrantKind
	User           string
	ConversationID string
	// OrderID is required for a refund; optional for a coupon.
	OrderID     string
	AmountCents int64
	// Lease is how long the grant holds unconfirmed: longer than the turn
	// that takes it can run. Default 5 minutes.
	Lease time.Duration
}

// GrantRefusal says which policy refused a grant.
type GrantRefusal string

// Grant refusals.
const (
	// RefusedOrderTaken: the order already has a live grant of the kind.
	RefusedOrderTaken GrantRefusal = "order_taken"
	// RefusedUserLimit: the customer had their coupons of the last 24 hours.
	RefusedUserLimit GrantRefusal = "user_limit"
	// RefusedShopBudget: the shop's coupon budget of the day is used up.
	RefusedShopBudget GrantRefusal = "shop_budget"
)

// Grant is the outcome of TakeGrant: ID when granted, else Refusal.
type Grant struct {
	ID      int64
	Refusal GrantRefusal
	// Limit is the policy's limit (coupons per day, or the day's budget in
	// cents) when the grant was refused by one.
	Limit int64
}

// CouponPolicy is a shop's coupon limits.
type CouponPolicy struct {
	PerUserPerDay     int
	BudgetPerDayCents int64
}

// ShopDay is the time zone of a shop's "per day" budgets: the calendar day
// in China, which starts at the midnight Double 11 does.
var ShopDay = time.FixedZone("Asia/Shanghai", 8*60*60)

// ErrGrantLapsed is returned by InsertActions when an action's grant is no
// longer live (it lapsed and another turn took the order): the reply's
// transaction must roll back and the turn be tried again, when the tool
// will refuse.
var ErrGrantLapsed = errors.New("storage: money grant lapsed")

// CouponPolicy returns shop's coupon limits, or ErrNotFound.
func (db *DB) CouponPolicy(ctx context.Context, shop string) (CouponPolicy, error) {
	var p CouponPolicy
	err := db.pool.QueryRow(ctx, `SELECT coupon_per_user_per_day, coupon_budget_per_day_cents
		FROM shops WHERE id = $1`, shop).Scan(&p.PerUserPerDay, &p.BudgetPerDayCents)
	switch {
	case noRows(err):
		return p, notFound("shop")
	case err != nil:
		return p, fmt.Errorf("storage: coupon policy: %w", err)
	}
	return p, nil
}

// SetCouponPolicy sets shop's coupon limits.
func (db *DB) SetCouponPolicy(ctx context.Context, shop string, p CouponPolicy) error {
	tag, err := db.pool.Exec(ctx, `UPDATE shops SET coupon_per_user_per_day = $2, coupon_budget_per_day_cents = $3
		WHERE id = $1`, shop, p.PerUserPerDay, p.BudgetPerDayCents)
	switch {
	case err != nil:
		return fmt.Errorf("storage: set coupon policy: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("shop")
	}
	return nil
}

// TakeGrant takes a grant for r, or says which policy refused it. Within
// one conversation a grant replaces the same kind's unconfirmed one (left by
// an earlier try of the turn: a conversation is answered one turn at a
// time), so a retried turn is not refused by its own first try.
func (db *DB) TakeGrant(ctx context.Context, r GrantRequest) (Grant, error) {
	if r.Lease <= 0 {
		r.Lease = 5 * time.Minute
	}
	switch {
	case r.Shop == "" || r.User == "" || r.ConversationID == "":
		return Grant{}, errors.New("storage: take grant: Shop, User and ConversationID are required")
	case r.Kind != GrantCoupon && r.Kind != GrantRefund:
		return Grant{}, fmt.Errorf("storage: take grant: unknown kind %q", r.Kind)
	case r.Kind == GrantRefund && r.OrderID == "":
		return Grant{}, errors.New("storage: take grant: a refund needs OrderID")
	case r.AmountCents < 0:
		return Grant{}, errors.New("storage: take grant: negative amount")
	}
	var g Grant
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var err error
		g, err = takeGrant(ctx, tx, r)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		// Another turn took the order between our release and insert.
		return Grant{Refusal: RefusedOrderTaken}, nil
	}
	if err != nil {
		return Grant{}, fmt.Errorf("storage: take grant: %w", err)
	}
	return g, nil
}

func takeGrant(ctx context.Context, tx pgx.Tx, r GrantRequest) (Grant, error) {
	// Release what no longer counts: this conversation's unconfirmed grant
	// of the kind, and lapsed ones of the order.
	if _, err := tx.Exec(ctx, `UPDATE money_grants SET released_at = now()
		WHERE shop_id = $1 AND kind = $2 AND confirmed_at IS NULL AND released_at IS NULL
		AND (conversation_id = $3 OR ($4 <> '' AND order_id = $4 AND expires_at < now()))`,
		r.Shop, string(r.Kind), r.ConversationID, r.OrderID); err != nil {
		return Grant{}, err
	}
	if r.Kind == GrantCoupon {
		// Coupons of one shop are granted one at a time: the counts below
		// cannot be raced by a concurrent grant.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('peakdesk coupon grants ' || $1, 0))`,
			r.Shop); err != nil {
			return Grant{}, err
		}
		var p CouponPolicy
		var userCount, dayCents int64
		dayStart := startOfShopDay(time.Now())
		err := tx.QueryRow(ctx, `SELECT s.coupon_per_user_per_day, s.coupon_budget_per_day_cents,
				(SELECT count(*) FROM money_grants g WHERE g.shop_id = s.id AND g.kind = 'coupon'
					AND g.user_id = $2 AND g.released_at IS NULL AND g.created_at > now() - interval '24 hours'
					AND (g.confirmed_at IS NOT NULL OR g.expires_at > now())),
				(SELECT coalesce(sum(g.amount_cents), 0) FROM money_grants g WHERE g.shop_id = s.id
					AND g.kind = 'coupon' AND g.released_at IS NULL AND g.created_at >= $3
					AND (g.confirmed_at IS NOT NULL OR g.expires_at > now()))
			FROM shops s WHERE s.id = $1`, r.Shop, r.User, dayStart).Scan(
			&p.PerUserPerDay, &p.BudgetPerDayCents, &userCount, &dayCents)
		switch {
		case noRows(err):
			return Grant{}, notFound("shop")
		case err != nil:
			return Grant{}, err
		case userCount >= int64(p.PerUserPerDay):
			return Grant{Refusal: RefusedUserLimit, Limit: int64(p.PerUserPerDay)}, nil
		case dayCents+r.AmountCents > p.BudgetPerDayCents:
			return Grant{Refusal: RefusedShopBudget, Limit: p.BudgetPerDayCents}, nil
		}
	}
	// A live grant of the order (unique index) refuses this one.
	var id int64
	err := tx.QueryRow(ctx, `INSERT INTO money_grants (shop_id, kind, user_id, order_id, conversation_id,
			amount_cents, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval)
		ON CONFLICT DO NOTHING RETURNING id`,
		r.Shop, string(r.Kind), r.User, r.OrderID, r.ConversationID, r.AmountCents, r.Lease).Scan(&id)
	if noRows(err) {
		return Grant{Refusal: RefusedOrderTaken}, nil
	}
	if err != nil {
		return Grant{}, err
	}
	return Grant{ID: id}, nil
}

// startOfShopDay returns the start of t's calendar day in ShopDay.
func startOfShopDay(t time.Time) time.Time {
	t = t.In(ShopDay)
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, ShopDay)
}

// confirmGrants confirms, in the reply's transaction tx, the grants of
// actions just inserted. A grant that is no longer live fails the
// transaction with ErrGrantLapsed.
func confirmGrants(ctx context.Context, tx pgx.Tx, shops []string, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	tag, err := tx.Exec(ctx, `UPDATE money_grants g SET confirmed_at = coalesce(g.confirmed_at, now())
		FROM unnest($1::text[], $2::bigint[]) AS t(shop, id)
		WHERE g.id = t.id AND g.shop_id = t.shop AND g.released_at IS NULL`, shops, ids)
	if err != nil {
		return fmt.Errorf("storage: confirm grants: %w", err)
	}
	if int(tag.RowsAffected()) != len(ids) {
		return ErrGrantLapsed
	}
	return nil
}
