package ingest

import (
	"context"
	"log/slog"
	"sync"
	"time"

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

// humanOwnedRetry is how long the edge waits before connecting again.
const humanOwnedRetry = time.Second

// humanOwners keeps which conversations human agents own.
type humanOwners struct {
	db  *storage.DB
	log *slog.Logger

	mu    sync.RWMutex
	retry time.Duration       // wait before connecting again
	known bool                // following the moves
	owned map[string]struct{} // shop \x00 conversation

	cancel context.CancelFunc
	done   chan struct{}
}

func newHumanOwners(db *storage.DB, log *slog.Logger) *humanOwners {
	return &humanOwners{db: db, log: log, retry: humanOwnedRetry}
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

// start follows the moves in the background. It connects once first,
// within ctx, so that an edge started with Postgres up knows from its
// first request.
func (h *humanOwners) start(ctx context.Context) {
	l := h.connect(ctx)
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

// connect listens and loads the conversations humans own; nil when it
// cannot.
func (h *humanOwners) connect(ctx context.Context) *storage.HumanOwnedListener {
	l, owned, err := h.db.ListenHumanOwned(ctx)
	if err != nil {
		if ctx.Err() == nil {
			h.log.Warn("cannot follow which conversations human agents own; shed messages naming a conversation get 429",
				"err", err)
		}
		return nil
	}
	m := make(map[string]struct{}, len(owned))
	for _, o := range owned {
		m[ownerKey(o.ShopID, o.ConversationID)] = struct{}{}
	}
	h.mu.Lock()
	h.owned, h.known = m, true
	h.mu.Unlock()
	return l
}

func (h *humanOwners) run(ctx context.Context, l *storage.HumanOwnedListener) {
	defer close(h.done)
	for {
		for l == nil {
			h.mu.RLock()
			t := time.NewTimer(h.retry)
			h.mu.RUnlock()
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			l = h.connect(ctx)
		}
		var err error
		for {
			var o storage.HumanOwnership
			if o, err = l.Next(ctx); err != nil {
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
		// Moves made until the next connection would be missed: unknown.
		h.mu.Lock()
		h.owned, h.known = nil, false
		h.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		h.log.Warn("lost track of which conversations human agents own; reconnecting", "err", err)
	}
}
