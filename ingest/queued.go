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
// before a worker stores it). Writes are pipelined in batches; if Redis is
// slow the buffer fills and entries are dropped — GET then still answers
// "queued" from the signed id.
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
	key string
	val []byte
}

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
	case w.ch <- queuedEntry{key, val}:
	default:
		w.errors.Inc()
	}
}

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
	}
}
