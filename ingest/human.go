package ingest

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// A message for a conversation a human agent owns (waiting_human or
// assigned) is not the bot's work: the bot stays silent there, so the edge
// must never answer it from the FAQ, however loaded. Its worker stores it
// for the agent without an LLM call, so while shedding the edge queues it
// as if it had accepted it (or answers 429 if even that is refused).
//
// The edge knows which conversations a human owns without a query per
// request: humanOwners keeps them in memory, loaded when it connects and
// kept by the notifications every takeover move sends in its transaction
// (storage.ListenHumanOwned). Only shed messages that name a conversation
// look; a new conversation is the bot's. A move reaches the edge a few
// milliseconds after its commit; a shed answer given in that window is
// caught by the shed writer (storage.SaveShedAnswers keeps the message for
// the agent).
//
// While the edge does not follow the moves — before it first connected,
// or after the connection was lost, until it is back — it does not know.
// It then takes the safe side for the customer: a shed message that names
// a conversation gets 429 (retry later), never an FAQ answer that could
// speak in a human's conversation, and not a queued message either, since
// the desk is overloaded and most conversations are the bot's.

// The listening connection is checked when it has been quiet for
// humanOwnedIdle (storage.HumanOwnedListener.Next): a connection dead
// without a reset leaves the edge stale at most that long plus a ping's
// wait (5 s), after which it reconnects and loads the full set again. While
// Postgres is away the edge tries again on the project's back-off (1 s
// more each time, jittered, at most 30 s) and says so once when it loses
// track, at most once a minute while that lasts, and once when it is back.
const (
	humanOwnedIdle     = 30 * time.Second
	humanOwnedLogEvery = time.Minute
	// humanOwnedSteady is how long a connection must have lasted for the
	// back-off to start again from its first step; a connection that keeps
	// breaking at once is retried ever more slowly, so logged ever more seldom.
	humanOwnedSteady = time.Minute
)

// humanOwners keeps which conversations human agents own.
type humanOwners struct {
	db  *storage.DB
	log *slog.Logger

	// Set before start; tests shorten them.
	idle     time.Duration // quiet time before the connection is checked
	logEvery time.Duration // at most one "still cannot" log per logEvery

	mu      sync.RWMutex
	backoff peakdesk.LinearBackOff // wait before connecting again
	known   bool                   // following the moves
	owned   map[string]struct{}    // shop \x00 conversation

	cancel context.CancelFunc
	done   chan struct{}
}

func newHumanOwners(db *storage.DB, log *slog.Logger) *humanOwners {
	return &humanOwners{db: db, log: log, idle: humanOwnedIdle, logEvery: humanOwnedLogEvery,
		backoff: peakdesk.LinearBackOff{Step: time.Second, Max: 30 * time.Second, Jitter: 0.2}}
}

func ownerKey(shop, conv string) string { return shop + "\x00" + conv }

// owns reports whether a human agent owns conversation conv of shop;
// known is false while the edge does not follow the moves.
func (h *humanOwners) owns(shop, conv string) (human, known bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if !h.known {
		return false, false
	}
	_, human = h.owned[ownerKey(shop, conv)]
	return human, true
}

// size is how many conversations humans own, -1 while unknown.
func (h *humanOwners) size() float64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if !h.known {
		return -1
	}
	return float64(len(h.owned))
}

// up is 1 while the edge follows the moves (listening, the set loaded),
// else 0.
func (h *humanOwners) up() float64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.known {
		return 1
	}
	return 0
}

// start follows the moves in the background. It connects once first,
// within ctx, so that an edge started with Postgres up knows from its
// first request.
func (h *humanOwners) start(ctx context.Context) {
	l, err := h.connect(ctx)
	if err != nil && ctx.Err() == nil {
		h.log.Warn("cannot follow which conversations human agents own; shed messages naming a conversation get 429 until it can",
			"err", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go h.run(runCtx, l)
}

func (h *humanOwners) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
	}
}

// connect listens and loads the conversations humans own.
func (h *humanOwners) connect(ctx context.Context) (*storage.HumanOwnedListener, error) {
	l, owned, err := h.db.ListenHumanOwned(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]struct{}, len(owned))
	for _, o := range owned {
		m[ownerKey(o.ShopID, o.ConversationID)] = struct{}{}
	}
	h.mu.Lock()
	h.owned, h.known = m, true
	h.mu.Unlock()
	return l, nil
}

// nextWait is the wait before the next connection attempt.
func (h *humanOwners) nextWait() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.backoff.NextBackOff()
}

func (h *humanOwners) run(ctx context.Context, l *storage.HumanOwnedListener) {
	defer close(h.done)
	// lost is when the edge stopped following the moves; logged when it
	// last said it still cannot; failed counts attempts since.
	lost, logged, failed := time.Now(), time.Now(), 0
	for {
		for l == nil {
			if peakdesk.Sleep(ctx, h.nextWait()) != nil {
				return
			}
			var err error
			if l, err = h.connect(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				failed++
				if time.Since(logged) >= h.logEvery {
					h.log.Warn("still cannot follow which conversations human agents own; shed messages naming a conversation get 429",
						"for", time.Since(lost).Round(time.Second), "attempts", failed, "err", err)
					logged = time.Now()
				}
				continue
			}
			h.log.Info("following which conversations human agents own again",
				"after", time.Since(lost).Round(time.Millisecond), "attempts", failed+1)
		}
		connected := time.Now()
		var err error
		for {
			var o storage.HumanOwnership
			if o, err = l.Next(ctx, h.idle); err != nil {
				break
			}
			h.mu.Lock()
			if o.Human {
				h.owned[ownerKey(o.ShopID, o.ConversationID)] = struct{}{}
			} else {
				delete(h.owned, ownerKey(o.ShopID, o.ConversationID))
			}
			h.mu.Unlock()
		}
		l.Close()
		l = nil
		// Moves made until the next connection would be missed: unknown,
		// and the next connection loads the full set again.
		h.mu.Lock()
		h.owned, h.known = nil, false
		if time.Since(connected) >= humanOwnedSteady {
			h.backoff.Reset()
		}
		h.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		lost, logged, failed = time.Now(), time.Now(), 0
		h.log.Warn("lost track of which conversations human agents own; shed messages naming a conversation get 429 until the edge reconnects",
			"err", err)
	}
}
