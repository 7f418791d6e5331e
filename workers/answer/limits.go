package answer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk/workers/llm"
)

// LLM limits. Two caps keep a shop's LLM bill bounded on the busiest night;
// past either, a turn is answered without the LLM — from the FAQ, else by a
// handoff — exactly as when the models fail.
//
//   - Spend per shop and day. Before each call the worst case it can cost
//     (the prompt's estimate plus the shop's max_tokens, at the model's
//     prices, in the shop's currency) is reserved in a Redis counter keyed
//     by shop and day, by a script that reserves only if the day's spend
//     plus the reservation stays within the cap. After the call the
//     reservation is settled to what the call cost (INCRBY actual −
//     reserved); a failed call costs nothing, except a stream that broke
//     after the provider wrote part of an answer, which keeps its
//     reservation. Concurrent calls can therefore never together pass the
//     cap, unless the provider bills more than the estimate (which leans
//     high) and max_tokens allow. A cap below one call's worst case allows
//     no call; a cheaper model later in the chain may still fit. The day
//     is the calendar day in Asia/Shanghai (UTC+8, no daylight saving):
//     the counter starts again at the midnight Double 11 begins. Counters
//     expire after 48 h.
//   - LLM answers per end user and clock hour (Asia/Shanghai), counted once
//     per turn that would call the LLM — not per retry, tool round or model
//     of the chain. A turn answered from the burst cache costs nothing.
//
// When Redis is unreachable the spend is counted in the process against the
// same cap (so an outage cannot run up an unlimited bill: at most the cap
// per worker process), and the per-user cap is not enforced.

// Cap reasons: Answer.Capped and the reason label of
// peakdesk_llm_capped_total.
const (
	// CapSpend: the shop's daily spend cap has no room for the call.
	CapSpend = "spend_cap"
	// CapUserCalls: the end user had their LLM answers for this hour.
	CapUserCalls = "user_calls"
	// CapNoFXRate: the shop has a spend cap in a currency without a rate
	// in the FX table, so the cap cannot be kept: no LLM call.
	CapNoFXRate = "no_fx_rate"
	// CapUnpriced: the shop has a spend cap and the model has no price in
	// the price table, so the cap cannot be kept: not that model.
	CapUnpriced = "unpriced_model"
)

// cappedError is a call not made because of a cap.
type cappedError struct{ reason string }

func (e *cappedError) Error() string { return "answer: llm call capped: " + e.reason }

// shanghai is the time zone of the desk's days and hours: China Standard
// Time, UTC+8 all year (fixed, so no time zone database is needed).
var shanghai = time.FixedZone("Asia/Shanghai", 8*60*60)

// spendDay is the day the spend of a call made at t counts for.
func spendDay(t time.Time) string { return t.In(shanghai).Format("20060102") }

// callHour is the hour the LLM answers of a turn at t count for.
func callHour(t time.Time) string { return t.In(shanghai).Format("2006010215") }

const (
	spendKeyTTL    = 48 * time.Hour
	callsKeyTTL    = 2 * time.Hour
	limitsTimeout  = time.Second
	limitsDegraded = 5 * time.Second // after a Redis failure, count locally this long
)

// limiter holds the counters of the LLM limits.
type limiter struct {
	rdb    *redis.Client
	prefix string
	log    *slog.Logger

	degradedUntil atomic.Int64 // unix nanos

	mu    sync.Mutex
	local map[string]localSpend // by shop, while Redis is unreachable
}

type localSpend struct {
	day  string
	used int64
}

func newLimiter(rdb *redis.Client, prefix string, log *slog.Logger) *limiter {
	return &limiter{rdb: rdb, prefix: prefix, log: log, local: map[string]localSpend{}}
}

// reservation is spend reserved for one call; settle it exactly once.
type reservation struct {
	shop, day string
	key       string // the Redis key; empty for one taken in the process
	amount    int64
}

// The spend counters are in millionths of the shop's currency unit.
var (
	reserveScript = redis.NewScript(`
local used = tonumber(redis.call("get", KEYS[1]) or "0")
local amount = tonumber(ARGV[1])
if used + amount > tonumber(ARGV[2]) then return {0, used} end
used = redis.call("incrby", KEYS[1], amount)
if redis.call("pttl", KEYS[1]) < 0 then redis.call("pexpire", KEYS[1], ARGV[3]) end
return {1, used}`)
	settleScript = redis.NewScript(`
local used = redis.call("incrby", KEYS[1], ARGV[1])
if used < 0 then redis.call("set", KEYS[1], 0, "keepttl") used = 0 end
if redis.call("pttl", KEYS[1]) < 0 then redis.call("pexpire", KEYS[1], ARGV[2]) end
return used`)
	callScript = redis.NewScript(`
local n = tonumber(redis.call("get", KEYS[1]) or "0")
if n >= tonumber(ARGV[1]) then return 0 end
redis.call("incr", KEYS[1])
if redis.call("pttl", KEYS[1]) < 0 then redis.call("pexpire", KEYS[1], ARGV[2]) end
return 1`)
)

func (l *limiter) spendKey(shop, day string) string {
	return l.prefix + "llm:spend:" + shop + ":" + day
}

// reserve reserves amount of shop's spend cap for the day of now. It
// reports whether it fitted, and the day's spend before it.
func (l *limiter) reserve(ctx context.Context, shop string, now time.Time, limit, amount int64) (reservation, bool, int64) {
	r := reservation{shop: shop, day: spendDay(now), amount: amount}
	if !l.degraded() {
		key := l.spendKey(shop, r.day)
		rctx, cancel := context.WithTimeout(ctx, limitsTimeout)
		res, err := reserveScript.Run(rctx, l.rdb, []string{key}, amount, limit, spendKeyTTL.Milliseconds()).Int64Slice()
		cancel()
		if err == nil && len(res) != 2 {
			err = fmt.Errorf("unexpected reply %v", res)
		}
		if err == nil {
			r.key = key
			return r, res[0] == 1, res[1]
		}
		if ctx.Err() != nil {
			return r, false, 0
		}
		l.degrade(fmt.Errorf("reserve: %w", err))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.local[shop]
	if s.day != r.day {
		s = localSpend{day: r.day}
	}
	used := s.used
	if used+amount > limit {
		return r, false, used
	}
	s.used += amount
	l.local[shop] = s
	return r, true, used
}

// settle corrects r to what the call actually cost. It outlives a cancelled
// request: the call was made.
func (l *limiter) settle(ctx context.Context, r reservation, actual int64) {
	delta := actual - r.amount
	if delta == 0 {
		return
	}
	if r.key != "" {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), limitsTimeout)
		defer cancel()
		err := settleScript.Run(rctx, l.rdb, []string{r.key}, delta, spendKeyTTL.Milliseconds()).Err()
		if err != nil {
			// The reservation stands as it was: the counter errs high by
			// the difference when the call cost less.
			l.degrade(fmt.Errorf("settle: %w", err))
		}
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.local[r.shop]; s.day == r.day {
		s.used = max(s.used+delta, 0)
		l.local[r.shop] = s
	}
}

// takeCall counts one LLM answer of user at shop for the hour of now, if the
// hour's count is below limit. With Redis unreachable it allows the call.
func (l *limiter) takeCall(ctx context.Context, shop, user string, now time.Time, limit int) bool {
	if l.degraded() {
		return true
	}
	sum := sha256.Sum256([]byte(user))
	// The user's id stays out of Redis: a hash names them.
	key := l.prefix + "llm:calls:" + shop + ":" + hex.EncodeToString(sum[:8]) + ":" + callHour(now)
	rctx, cancel := context.WithTimeout(ctx, limitsTimeout)
	defer cancel()
	ok, err := callScript.Run(rctx, l.rdb, []string{key}, limit, callsKeyTTL.Milliseconds()).Int()
	if err != nil {
		if ctx.Err() == nil {
			l.degrade(fmt.Errorf("count call: %w", err))
		}
		return true
	}
	return ok == 1
}

func (l *limiter) degraded() bool { return time.Now().UnixNano() < l.degradedUntil.Load() }

func (l *limiter) degrade(err error) {
	until := time.Now().Add(limitsDegraded)
	if prev := l.degradedUntil.Swap(until.UnixNano()); prev < time.Now().UnixNano() {
		l.log.Warn("llm limits: Redis unavailable; spend caps are counted per process and per-user caps are off",
			"for", limitsDegraded, "err", err)
	}
}

// takeUserCall counts the turn against its user's LLM answers this hour and
// reports whether the LLM may answer it.
func (a *Answerer) takeUserCall(ctx context.Context, t turn, r route) bool {
	limit := r.limits.CallsPerUserPerHour
	if limit == nil || t.req.User == "" || len(r.Models) == 0 {
		return true
	}
	return a.limits.takeCall(ctx, t.req.Shop, t.req.User, a.cfg.Clock.Now(), *limit)
}

// reserveCall reserves the worst-case cost of calling model with turns
// against the shop's spend cap: the prompt's estimate and max_tokens of
// completion at the model's prices, in the shop's currency. It returns nil
// when the shop has no cap, and a *cappedError when the call must not be
// made.
func (a *Answerer) reserveCall(ctx context.Context, t turn, r route, model string, turns []llm.Turn) (*reservation, error) {
	cents := r.limits.SpendCapPerDayCents
	if cents == nil {
		return nil, nil
	}
	prompt := llm.EstimatePromptTokens(turns, t.req.Tools)
	usd, ok := a.cfg.Prices.CostMicroUSD(model, prompt, r.limits.MaxTokens)
	if !ok {
		return nil, &cappedError{reason: CapUnpriced}
	}
	amount, ok := a.cfg.FXRates.MicroUnits(r.limits.Currency, usd)
	if !ok {
		return nil, &cappedError{reason: CapNoFXRate}
	}
	// The cap is in hundredths of the currency; the counter in millionths.
	res, fits, _ := a.limits.reserve(ctx, t.req.Shop, a.cfg.Clock.Now(), *cents*10_000, amount)
	if !fits {
		return nil, &cappedError{reason: CapSpend}
	}
	return &res, nil
}

// settleCall settles res (nil: nothing reserved) to costMicroUSD, what the
// call cost. A call that failed cost nothing, unless it broke after the
// provider wrote part of an answer: that one keeps its reservation.
func (a *Answerer) settleCall(ctx context.Context, r route, res *reservation, costMicroUSD int64, err error) {
	if res == nil {
		return
	}
	actual, _ := a.cfg.FXRates.MicroUnits(r.limits.Currency, costMicroUSD) // the rate was there to reserve
	if err != nil {
		actual = 0
		if errors.Is(err, llm.ErrStreamBroken) {
			actual = res.amount
		}
	}
	a.limits.settle(ctx, *res, actual)
}

// noteCapped counts a turn a cap kept from a model (reason empty: none did)
// and warns at most once a minute per shop.
func (a *Answerer) noteCapped(t turn, r route, reason string) {
	if reason == "" {
		return
	}
	a.metrics.capped.WithLabelValues(t.req.Shop, reason).Inc()
	v, _ := a.capLogged.LoadOrStore(t.req.Shop, new(atomic.Int64))
	last := v.(*atomic.Int64)
	now, prev := time.Now().UnixNano(), last.Load()
	if now-prev < int64(time.Minute) || !last.CompareAndSwap(prev, now) {
		return
	}
	// No user id: the shop and the cap are what an operator acts on.
	args := []any{"shop", t.req.Shop, "reason", reason, "currency", r.limits.Currency,
		"max_tokens", r.limits.MaxTokens}
	if c := r.limits.SpendCapPerDayCents; c != nil {
		args = append(args, "spend_cap_per_day_cents", *c)
	}
	if c := r.limits.CallsPerUserPerHour; c != nil {
		args = append(args, "calls_per_user_per_hour", *c)
	}
	a.log.Warn("llm capped: answering from the FAQ or handing off", args...)
}
