// Package shopwatch tells a process's caches at once when a shop's settings
// change, so that a change made in the console, the admin API or the CLI
// reaches every process within moments instead of a cache's lifetime.
//
// Postgres notifies the channel peakdesk_settings with the shop's id on
// every write of a shop's settings (triggers on the settings tables, so a
// change by hand in SQL counts too). A Watcher listens on a connection of
// its own and calls its subscribers with the id; they drop what they
// cached of the shop and read it again when next asked. While the
// connection is down nothing arrives, so after it comes back the
// subscribers are told that every shop may have changed (the id ""). The
// caches keep their lifetimes as a backstop; nothing here polls.
package shopwatch

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// AllShops is the shop id subscribers get when every shop may have changed.
const AllShops = ""

// Config configures a Watcher. DB is required.
type Config struct {
	DB *storage.DB
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Watcher delivers shop settings notifications to subscribers.
type Watcher struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	subs []func(shop string)

	cancel   context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

// New returns a Watcher for cfg. Start it to listen.
func New(cfg Config) (*Watcher, error) {
	if cfg.DB == nil {
		return nil, errors.New("shopwatch: config: DB is required")
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	return &Watcher{cfg: cfg, log: cfg.Logger.With("component", "shopwatch")}, nil
}

// Subscribe adds fn, called with the id of each shop whose settings
// changed, or AllShops. fn runs on the Watcher's goroutine, one call at a
// time: it must return quickly (drop a cache entry, nudge a loop) and never
// wait. It may be called more than once for one change, so it must be
// idempotent. Subscribe may be called before or after Start.
func (w *Watcher) Subscribe(fn func(shop string)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs = append(w.subs, fn)
}

// Start listens and returns once the listening connection is up, or fails
// fast when Postgres is unreachable. The subscribers so far are told every
// shop may have changed: what they cached before the listening began may
// have changed unseen.
func (w *Watcher) Start(ctx context.Context) error {
	l, err := w.cfg.DB.ListenSettings(ctx)
	if err != nil {
		return err
	}
	w.deliver(AllShops)
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.cancel, w.done = cancel, make(chan struct{})
	go w.run(loopCtx, l)
	return nil
}

// Stop stops listening and waits for it. Idempotent.
func (w *Watcher) Stop() {
	w.stopOnce.Do(func() {
		if w.cancel != nil {
			w.cancel()
			<-w.done
		}
	})
}

// run delivers notifications, listening again when the connection fails.
func (w *Watcher) run(ctx context.Context, l *storage.SettingsListener) {
	defer close(w.done)
	reconnect := peakdesk.LinearBackOff{Step: 500 * time.Millisecond, Max: 30 * time.Second, Jitter: 0.2}
	for {
		if l == nil {
			var err error
			if l, err = w.cfg.DB.ListenSettings(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				w.log.Warn("cannot listen for shop settings changes; caches expire meanwhile", "err", err)
				if peakdesk.Sleep(ctx, reconnect.NextBackOff()) != nil {
					return
				}
				continue
			}
			reconnect.Reset()
			w.deliver(AllShops) // changes may have gone by while disconnected
		}
		shop, err := l.Next(ctx)
		if err != nil {
			l.Close()
			l = nil
			if ctx.Err() != nil {
				return
			}
			w.log.Warn("lost the shop settings listening connection", "err", err)
			continue
		}
		w.deliver(shop)
	}
}

func (w *Watcher) deliver(shop string) {
	w.mu.Lock()
	subs := w.subs
	w.mu.Unlock()
	for _, fn := range subs {
		fn(shop)
	}
}
