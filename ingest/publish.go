package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// publisher stores messages in CHAT_IN. publish returns once JetStream has
// acked the message (durably stored, as the stream's fsync policy defines
// it) and reports whether JetStream saw it as a duplicate.
type publisher interface {
	publish(ctx context.Context, msg *nats.Msg) (duplicate bool, err error)
	stop()
}

var errPublisherStopped = errors.New("ingest: publisher stopped")

// asyncPublisher pipelines concurrent requests' publishes on the shared
// connection (async publish with bounded in-flight), each request waiting
// for its own ack. It suits JetStream's default lazy fsync.
type asyncPublisher struct {
	js jetstream.JetStream
}

func (p asyncPublisher) publish(ctx context.Context, msg *nats.Msg) (bool, error) {
	fut, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		return false, err
	}
	select {
	case ack := <-fut.Ok():
		return ack.Duplicate, nil
	case err := <-fut.Err():
		return false, err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func (asyncPublisher) stop() {}

// batchPublisher is group commit for `sync_interval: always`: requests that
// arrive while a batch is being committed are gathered into the next atomic
// batch, so one fsync covers many messages. Nothing waits for a timer: an
// idle edge commits a lone message at once. A batch the server refuses as a
// whole (a repeated idempotency key, a full stream) is retried message by
// message, so each request gets its own verdict.
type batchPublisher struct {
	js       jetstream.JetStream
	reqs     chan *batchReq
	maxBatch int
	slots    chan struct{} // batches in flight
	quit     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once

	// mu orders enqueueing before stopping: once stopped is set no request
	// enters reqs, so the loop's final drain answers every queued one.
	mu      sync.RWMutex
	stopped bool
}

type batchReq struct {
	ctx context.Context
	msg *nats.Msg
	res chan batchRes
}

type batchRes struct {
	duplicate bool
	err       error
}

func newBatchPublisher(js jetstream.JetStream, maxBatch, inflight int) *batchPublisher {
	p := &batchPublisher{
		js:       js,
		reqs:     make(chan *batchReq, maxBatch*inflight),
		maxBatch: maxBatch,
		slots:    make(chan struct{}, inflight),
		quit:     make(chan struct{}),
	}
	p.wg.Add(1)
	go p.loop()
	return p
}

func (p *batchPublisher) publish(ctx context.Context, msg *nats.Msg) (bool, error) {
	req := &batchReq{ctx: ctx, msg: msg, res: make(chan batchRes, 1)}
	p.mu.RLock()
	if p.stopped {
		p.mu.RUnlock()
		return false, errPublisherStopped
	}
	select {
	case p.reqs <- req:
		p.mu.RUnlock()
	case <-ctx.Done():
		p.mu.RUnlock()
		return false, ctx.Err()
	}
	select {
	case r := <-req.res:
		return r.duplicate, r.err
	case <-ctx.Done():
		// The batch may still commit it; the client retries with its key.
		return false, ctx.Err()
	}
}

// stop commits what is queued and waits for every batch in flight.
func (p *batchPublisher) stop() {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.stopped = true
		p.mu.Unlock()
		close(p.quit)
		p.wg.Wait()
	})
}

func (p *batchPublisher) loop() {
	defer p.wg.Done()
	for {
		var first *batchReq
		select {
		case first = <-p.reqs:
		case <-p.quit:
			p.drain()
			return
		}
		// Wait for a free commit slot; what arrives meanwhile joins the batch.
		p.slots <- struct{}{}
		batch := []*batchReq{first}
	gather:
		for len(batch) < p.maxBatch {
			select {
			case r := <-p.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		p.wg.Add(1)
		go func() {
			defer func() { <-p.slots; p.wg.Done() }()
			p.commit(batch)
		}()
	}
}

// drain answers requests still queued at stop.
func (p *batchPublisher) drain() {
	for {
		select {
		case r := <-p.reqs:
			r.res <- batchRes{err: errPublisherStopped}
		default:
			return
		}
	}
}

func (p *batchPublisher) commit(batch []*batchReq) {
	ctx := context.Background()
	if len(batch) > 1 {
		msgs := make([]*nats.Msg, len(batch))
		for i, r := range batch {
			msgs[i] = r.msg
		}
		if _, err := jetstreamext.PublishMsgBatch(ctx, p.js, msgs); err == nil {
			for _, r := range batch {
				r.res <- batchRes{}
			}
			return
		}
		// Refused as a whole: the batch headers must go before the messages
		// are sent again on their own.
		for _, m := range msgs {
			for _, h := range []string{jetstreamext.BatchIDHeader, jetstreamext.BatchSeqHeader, jetstreamext.BatchCommitHeader} {
				m.Header.Del(h)
			}
		}
	}
	var wg sync.WaitGroup
	for _, r := range batch {
		wg.Go(func() {
			ack, err := p.js.PublishMsg(r.ctx, r.msg)
			if err != nil {
				r.res <- batchRes{err: fmt.Errorf("publish: %w", err)}
				return
			}
			r.res <- batchRes{duplicate: ack.Duplicate}
		})
	}
	wg.Wait()
}
