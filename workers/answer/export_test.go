package answer

import (
	"context"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// LeaderKey returns the Redis key a burst of questions like req elects its
// leader under, and whether req would be coalesced at all.
func (a *Answerer) LeaderKey(req Request) (string, bool) {
	key, ok := a.coalesceKey(req, req.Question, nil)
	return a.leadKey(key), ok
}

// Limiter is the counters of the LLM limits, for tests.
type Limiter struct{ l *limiter }

// NewLimiter returns the limiter an Answerer with rdb and prefix would use.
func NewLimiter(rdb *redis.Client, prefix string) Limiter {
	return Limiter{newLimiter(rdb, prefix, slog.New(slog.DiscardHandler))}
}

// Reserve reserves amount of shop's daily cap limit at now; settle settles
// the reservation when it fitted.
func (l Limiter) Reserve(ctx context.Context, shop string, now time.Time, limit, amount int64) (fits bool, settle func(actual int64)) {
	r, fits, _ := l.l.reserve(ctx, shop, now, limit, amount)
	return fits, func(actual int64) { l.l.settle(ctx, r, actual) }
}

// TakeCall counts one LLM answer of user at shop in the hour of now.
func (l Limiter) TakeCall(ctx context.Context, shop, user string, now time.Time, limit int) bool {
	return l.l.takeCall(ctx, shop, user, now, limit)
}

// SpendKey is the Redis key of shop's spend on the day of now.
func (l Limiter) SpendKey(shop string, now time.Time) string {
	return l.l.spendKey(shop, spendDay(now))
}
