package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// Shedding must cost what accepting costs, because it happens exactly when
// the burst is worst. A shed message the FAQ answers is answered from
// memory (a cached FAQ lookup) and made durable the way an accepted message
// is: one publish to CHAT_IN, on chat.shed.<shop>, acked by JetStream
// before the 200 — no Postgres transaction on the request path. The shed
// writer (workers/shedwriter) stores those answers in batches and publishes
// their reply events; until it has, GET answers from the queued-state
// cache in Redis, which holds the answer. The publish carries the message
// id as Nats-Msg-Id in CHAT_IN's duplicate window, so a message is either
// queued for the workers or answered here, never both.
//
// A shed order question takes the same path: its "checking" answer and the
// order.followup action it promises travel in one record, and the writer
// stores message, answer, webhook and follow-up in its batch transaction.

// shed answers message m, which admission control will not queue: an order
// question with "checking" and a follow-up, a question the FAQ is confident
// about with its answer (200 answered), a repeat with its first result, or
// 429 with retry.
//
// A message with a key may be a client's retry of one the edge took
// before. Within CHAT_IN's duplicate window the publish says so; after it
// the publish goes through, and the shed writer, finding the message
// stored, drops the new answer — which the client would have been given,
// though it is stored nowhere. So a keyed message's first result is looked
// up before it is answered: one Redis read while it is new (knownMessage).
func (e *Edge) shed(ctx context.Context, m *peakdesk.Message, key string, retry time.Duration) (accepted, error) {
	if key != "" {
		if st, ok := e.knownMessage(ctx, m); ok {
			return stateResult(m.ID, st), nil
		}
	}
	if text, actions, ok := e.orderShed(ctx, m); ok {
		// "Checking" now; the order.followup that the relays carry out
		// (coalesced shop lookups, no LLM, no queue) pushes the facts on
		// the conversation. The edge never waits on the shop.
		reply := &peakdesk.Reply{ID: newReplyID(), ShopID: m.ShopID, ConversationID: m.ConversationID,
			UserID: m.UserID, MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceOrder, FollowUp: true,
			CreatedAt: time.Now().UTC()}
		return e.publishShed(ctx, m, reply, "order", actions...)
	}
	text, ok := e.faq.answer(ctx, m.ShopID, m.Text)
	if !ok {
		return e.refused(m, retry, "rejected") // a repeat was looked up above
	}
	// UserID routes the reply's event to the customer's subject; the shed
	// record carries it in the message (Reply.UserID is not encoded).
	reply := &peakdesk.Reply{ID: newReplyID(), ShopID: m.ShopID, ConversationID: m.ConversationID, UserID: m.UserID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceFAQ, CreatedAt: time.Now().UTC()}
	return e.publishShed(ctx, m, reply, "faq")
}

// publishShed publishes m answered by reply (promising actions) to CHAT_IN
// for the shed writer, which stores it; until then GET answers from the
// queued-state cache. outcome names the answer in the shed metric.
func (e *Edge) publishShed(ctx context.Context, m *peakdesk.Message, reply *peakdesk.Reply, outcome string,
	actions ...peakdesk.Action) (accepted, error) {
	data, err := queue.EncodeShed(m, reply, actions...)
	if err != nil {
		return accepted{}, err
	}
	msg := nats.NewMsg(queue.ShedSubject(m.ShopID))
	msg.Data = data
	msg.Header.Set(peakdesk.TraceHeader, peakdesk.TraceFrom(ctx).Parent)
	msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	duplicate, err := e.publishMsg(ctx, msg, m)
	if err != nil {
		return accepted{}, err
	}
	if duplicate {
		// The id is in CHAT_IN already: queued earlier, or answered by an
		// earlier shed. Its first result stands.
		if st, ok := e.knownMessage(ctx, m); ok {
			return stateResult(m.ID, st), nil
		}
		return accepted{MessageID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
			Status: peakdesk.StatusQueued}, nil
	}
	e.metrics.shed.WithLabelValues(string(m.Priority), outcome).Inc()
	e.remember(ctx, m, reply)
	return accepted{MessageID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
		Status: peakdesk.StatusAnswered, Reply: reply}, nil
}

// refuse answers shed message m 429 with retry, counted as outcome — or,
// for a repeat of a message accepted (or answered) before, its first
// result.
func (e *Edge) refuse(ctx context.Context, m *peakdesk.Message, key string, retry time.Duration, outcome string) (accepted, error) {
	if key != "" {
		if st, ok := e.knownMessage(ctx, m); ok {
			return stateResult(m.ID, st), nil
		}
	}
	return e.refused(m, retry, outcome)
}

// refused answers shed message m 429 with retry, counted as outcome.
func (e *Edge) refused(m *peakdesk.Message, retry time.Duration, outcome string) (accepted, error) {
	e.metrics.shed.WithLabelValues(string(m.Priority), outcome).Inc()
	return accepted{}, &peakdesk.Error{Code: peakdesk.ERateLimited, RetryAfter: retry,
		Message: "the desk is very busy right now, retry later"}
}

func stateResult(id string, st peakdesk.MessageState) accepted {
	return accepted{MessageID: id, ConversationID: st.ConversationID, Priority: st.Priority,
		Status: st.Status, Reply: st.Reply}
}

// orderShed is the answer to m when it is an order question: the
// "checking" text and the order.followup it promises. ok is false when m
// is not one, or the follow-up cannot be built (the caller goes on
// shedding).
func (e *Edge) orderShed(ctx context.Context, m *peakdesk.Message) (text string, actions []peakdesk.Action, ok bool) {
	if e.cfg.Orders == nil {
		return "", nil, false
	}
	text, actions, ok, err := e.cfg.Orders.ShedOrder(ctx, m)
	if err != nil {
		e.log.WarnContext(ctx, "a shed order question could not be followed up", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
		return "", nil, false
	}
	return text, actions, ok
}

func newReplyID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// faqAnswers answers shed messages from the shop's FAQ cheaply. A search of
// the in-memory index costs ~0.3 ms of CPU (BenchmarkSearch in
// workers/faq), more than the rest of a request; in a burst most questions
// are the same few, so answers — and the absence of one — are cached per
// shop and normalised question for a short TTL, identical questions that
// miss together search once, and searches in flight are bounded (more wait
// for a turn: the HTTP in-flight bound bounds the waiting).
type faqAnswers struct {
	faq   FAQ
	ttl   time.Duration
	size  int
	sem   chan struct{}
	group singleflight.Group

	lookups  *prometheus.CounterVec // by result: hit, miss (searched)
	inflight prometheus.Gauge
	seconds  prometheus.Histogram

	mu      sync.Mutex
	entries map[string]faqEntry
}

type faqEntry struct {
	answer string
	ok     bool
	until  time.Time
}

func newFAQAnswers(f FAQ, ttl time.Duration, size, concurrency int, m *edgeMetrics) *faqAnswers {
	return &faqAnswers{faq: f, ttl: ttl, size: size, sem: make(chan struct{}, concurrency),
		lookups: m.faqLookups, inflight: m.faqInflight, seconds: m.faqSeconds, entries: map[string]faqEntry{}}
}

// answer returns the FAQ's confident answer to question in shop.
func (c *faqAnswers) answer(ctx context.Context, shop, question string) (string, bool) {
	if c == nil || c.faq == nil {
		return "", false
	}
	q := normaliseQuestion(question)
	key := shop + "\x00" + q
	now := time.Now()
	c.mu.Lock()
	hit, found := c.entries[key]
	c.mu.Unlock()
	if found && now.Before(hit.until) {
		c.lookups.WithLabelValues("hit").Inc()
		return hit.answer, hit.ok
	}
	c.lookups.WithLabelValues("miss").Inc()
	v, _, _ := c.group.Do(key, func() (any, error) {
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return faqEntry{}, nil
		}
		c.inflight.Inc()
		start := time.Now()
		// The normalised question is searched, so that every question with
		// the same key gets the same answer.
		answer, ok := c.faq.Answer(ctx, shop, q)
		c.seconds.Observe(time.Since(start).Seconds())
		c.inflight.Dec()
		<-c.sem
		e := faqEntry{answer: answer, ok: ok, until: time.Now().Add(c.ttl)}
		if ctx.Err() == nil {
			// A search cut short by its request says nothing about the
			// question: it is not cached.
			c.store(key, e)
		}
		return e, nil
	})
	e := v.(faqEntry)
	return e.answer, e.ok
}

// len is how many questions are cached.
func (c *faqAnswers) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// store caches e under key, making room first when the cache is full:
// expired entries go, then, if that was not enough, entries at random
// (Go's map order) until it is half full.
func (c *faqAnswers) store(key string, e faqEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.size {
		now := time.Now()
		for k, v := range c.entries {
			if now.After(v.until) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.size/2 {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = e
}

// normaliseQuestion is the cache key of a question: lower case, without
// spaces and punctuation (which the FAQ's analyzer drops anyway), and every
// run of six or more digits — order numbers, which no FAQ entry is about —
// as one "#", so that "where is order 2024…1 / 2024…2" is one question.
func normaliseQuestion(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false // a separator is due before the next word
	digits := -1   // start of the pending run of digits in s, or -1
	endDigits := func(end int) {
		if digits < 0 {
			return
		}
		if end-digits >= 6 {
			b.WriteByte('#')
		} else {
			b.WriteString(s[digits:end])
		}
		digits = -1
	}
	for i, r := range s {
		if r >= '0' && r <= '9' {
			if digits < 0 {
				if space && b.Len() > 0 {
					b.WriteByte(' ')
				}
				space, digits = false, i
			}
			continue
		}
		endDigits(i)
		if unicode.IsSpace(r) || unicode.IsPunct(r) || unicode.IsSymbol(r) {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(unicode.ToLower(r))
	}
	endDigits(len(s))
	return b.String()
}
