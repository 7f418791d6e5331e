package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// OpenRedis returns a client for url. It does not insist that Redis answers
// now: every user of Redis in peakdesk degrades rather than fails when it
// is unreachable.
func OpenRedis(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("storage: parse redis url: %w", err)
	}
	opt.DialTimeout = cmpDuration(opt.DialTimeout, 2*time.Second)
	opt.ReadTimeout = cmpDuration(opt.ReadTimeout, time.Second)
	opt.WriteTimeout = cmpDuration(opt.WriteTimeout, time.Second)
	// Maintenance notifications are a Redis Cloud/Enterprise feature for
	// failovers; peakdesk's Redis holds caches and counters, and a client
	// cloned from these options (the edge limiter's) would register the
	// handlers twice and warn at every start.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewClient(opt), nil
}

func cmpDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Memory keeps the last turns of each conversation in Redis (a list per
// conversation with a TTL) and rebuilds them from Postgres on a miss, so the
// LLM sees recent context without a Postgres read per message.
type Memory struct {
	DB    *DB
	Redis *redis.Client
	// Turns is how many turns are kept. Default 10.
	Turns int
	// TTL is how long an idle conversation stays cached. Default 30 min.
	TTL time.Duration
}

func (m *Memory) key(shop, conv string) string { return "pd:mem:" + shop + ":" + conv }

func (m *Memory) turns() int {
	if m.Turns <= 0 {
		return 10
	}
	return m.Turns
}

func (m *Memory) ttl() time.Duration { return cmpDuration(m.TTL, 30*time.Minute) }

// Load returns the latest turns of conversation conv, oldest first, without
// the messages named in exclude (those being answered now). A Redis failure
// falls back to Postgres.
func (m *Memory) Load(ctx context.Context, shop, conv string, exclude []string) ([]Turn, error) {
	key := m.key(shop, conv)
	raw, err := m.Redis.LRange(ctx, key, 0, -1).Result()
	if err == nil && len(raw) > 0 {
		turns := make([]Turn, 0, len(raw))
		for _, s := range raw {
			var t Turn
			if json.Unmarshal([]byte(s), &t) == nil && t.Role != "" { // not noTurns
				turns = append(turns, t)
			}
		}
		return turns, nil
	}
	turns, err := m.DB.RecentTurns(ctx, shop, conv, m.turns(), exclude)
	if err != nil {
		return nil, err
	}
	// A conversation without turns yet (most are new) is cached too, as
	// the marker noTurns: Append then adds the turn being answered, and
	// its next message finds it in Redis rather than in Postgres.
	vals := []any{noTurns}
	if len(turns) > 0 {
		vals = make([]any, len(turns))
		for i, t := range turns {
			b, _ := json.Marshal(t)
			vals[i] = b
		}
	}
	// Best effort: a failed write only costs a rebuild next time.
	pipe := m.Redis.TxPipeline()
	pipe.Del(ctx, key)
	pipe.RPush(ctx, key, vals...)
	pipe.Expire(ctx, key, m.ttl())
	_, _ = pipe.Exec(ctx)
	return turns, nil
}

// noTurns is the cached list of a conversation without turns: an element
// that is no turn (Load skips it; Append's trim drops it in time).
const noTurns = `{}`

// Started notes that conversation conv has no turns yet (its first message
// started it): the next Load finds that in Redis, not in Postgres. A list
// there already is left alone: it can only be newer — a worker that took
// the conversation over while this one stalled, and cached its turn —
// and must not be wiped. Best effort, as the rest of the cache.
func (m *Memory) Started(ctx context.Context, shop, conv string) {
	_ = startedScript.Run(ctx, m.Redis, []string{m.key(shop, conv)}, noTurns, m.ttl().Milliseconds()).Err()
}

// startedScript creates the list KEYS[1] = [ARGV[1]] with a TTL of ARGV[2]
// ms unless it exists.
var startedScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
	redis.call('RPUSH', KEYS[1], ARGV[1])
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// Append adds turns to a cached conversation. An uncached conversation is
// left alone: the next Load rebuilds it from Postgres, which already holds
// the turns.
func (m *Memory) Append(ctx context.Context, shop, conv string, turns ...Turn) {
	if len(turns) == 0 {
		return
	}
	key := m.key(shop, conv)
	vals := make([]any, len(turns))
	for i, t := range turns {
		b, _ := json.Marshal(t)
		vals[i] = b
	}
	pipe := m.Redis.TxPipeline()
	pipe.RPushX(ctx, key, vals...)
	pipe.LTrim(ctx, key, int64(-m.turns()), -1)
	pipe.Expire(ctx, key, m.ttl())
	_, _ = pipe.Exec(ctx)
}

// Forget drops conversation conv's cached turns: the next Load rebuilds them
// from Postgres (after a human agent's replies, which no worker appended).
func (m *Memory) Forget(ctx context.Context, shop, conv string) {
	_ = m.Redis.Del(ctx, m.key(shop, conv)).Err()
}
