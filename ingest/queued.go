package ingest

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// queuedWriter records, best effort and off the request path, what the edge
// queued (so GET can name a queued message's conversation and priority
// before a worker stores it) and the answers it gave shed messages (so GET
// shows the answer before the shed writer stores it). Writes are pipelined
// in batches; a shed answer's request waits for its batch, briefly (see
// addWait). If Redis is slow the buffer (bounded, its fill a metric) fills
// and entries are dropped — GET then still answers "queued" from the signed
// id until the message is stored.
type queuedWriter struct {
	rdb    *redis.Client
	ch     chan queuedEntry
	errors prometheus.Counter
	wg     sync.WaitGroup
	once   sync.Once

	// mu orders add before stop: a handler that outlives the HTTP server's
	// shutdown must not send on the closed channel.
	mu      sync.RWMutex
	stopped bool
}

type queuedEntry struct {
	key  string
	val  []byte
	done chan struct{} // closed once the entry's batch is written; may be nil
}

// queuedWait bounds how long a request waits for its entry's batch.
const queuedWait = 250 * time.Millisecond

const queuedTTL = 24 * time.Hour

func newQueuedWriter(rdb *redis.Client, errors prometheus.Counter) *queuedWriter {
	w := &queuedWriter{rdb: rdb, ch: make(chan queuedEntry, 16384), errors: errors}
	if rdb != nil {
		w.wg.Add(1)
		go w.loop()
	}
	return w
}

func (w *queuedWriter) add(key string, val []byte) {
	if w.rdb == nil {
		return
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.stopped {
		return
	}
	select {
	case w.ch <- queuedEntry{key: key, val: val}:
	default:
		w.errors.Inc()
	}
}

// addWait is add for an entry that must be readable before the request
// answers: it waits until the entry's batch is written, at most queuedWait
// (Redis slow or down: the answer goes out anyway, and GET shows it once
// the shed writer has stored it).
func (w *queuedWriter) addWait(ctx context.Context, key string, val []byte) {
	if w.rdb == nil {
		return
	}
	done := make(chan struct{})
	w.mu.RLock()
	if w.stopped {
		w.mu.RUnlock()
		return
	}
	select {
	case w.ch <- queuedEntry{key: key, val: val, done: done}:
		w.mu.RUnlock()
	default:
		w.mu.RUnlock()
		w.errors.Inc()
		return
	}
	t := time.NewTimer(queuedWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// buffered is how many entries wait for Redis.
func (w *queuedWriter) buffered() int { return len(w.ch) }

func (w *queuedWriter) stop() {
	w.once.Do(func() {
		w.mu.Lock()
		w.stopped = true
		close(w.ch)
		w.mu.Unlock()
		w.wg.Wait()
	})
}

func (w *queuedWriter) loop() {
	defer w.wg.Done()
	batch := make([]queuedEntry, 0, 512)
	for e := range w.ch {
		batch = append(batch[:0], e)
	gather:
		for len(batch) < cap(batch) {
			select {
			case e, ok := <-w.ch:
				if !ok {
					break gather
				}
				batch = append(batch, e)
			default:
				break gather
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		pipe := w.rdb.Pipeline()
		for _, e := range batch {
			pipe.Set(ctx, e.key, e.val, queuedTTL)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			w.errors.Add(float64(len(batch)))
		}
		cancel()
		for _, e := range batch {
			if e.done != nil {
				close(e.done)
			}
		}
	}
}
