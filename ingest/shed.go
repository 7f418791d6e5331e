package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
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
// A shed order question is rarer and promises more (an order.followup
// action), so it is stored at once, message, answer and actions in one
// transaction (answerOrderShed), as before the shed writer.

// shed answers message m, which admission control will not queue: an order
// question with "checking" and a follow-up, a question the FAQ is confident
// about with its answer (200 answered), a repeat with its first result, or
// 429 with retry.
func (e *Edge) shed(ctx context.Context, m *peakdesk.Message, key string, retry time.Duration) (accepted, error) {
	if res, ok := e.answerOrderShed(ctx, m, key); ok {
		return res, nil
	}
	text, ok := e.faq.answer(ctx, m.ShopID, m.Text)
	if !ok {
		return e.refuse(ctx, m, key, retry, "rejected")
	}
	// UserID routes the reply's event to the customer's subject; the shed
	// record carries it in the message (Reply.UserID is not encoded).
	reply := &peakdesk.Reply{ID: newReplyID(), ShopID: m.ShopID, ConversationID: m.ConversationID, UserID: m.UserID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceFAQ, CreatedAt: time.Now().UTC()}
	data, err := queue.EncodeShed(m, reply)
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
	e.metrics.shed.WithLabelValues(string(m.Priority), "faq").Inc()
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
	e.metrics.shed.WithLabelValues(string(m.Priority), outcome).Inc()
	return accepted{}, &peakdesk.Error{Code: peakdesk.ERateLimited, RetryAfter: retry,
		Message: "the desk is very busy right now, retry later"}
}

func stateResult(id string, st peakdesk.MessageState) accepted {
	return accepted{MessageID: id, ConversationID: st.ConversationID, Priority: st.Priority,
		Status: st.Status, Reply: st.Reply}
}

// answerOrderShed answers a shed order question: "checking" now, and an
// order.followup that the relays carry out (coalesced shop lookups, no LLM,
// no queue) pushes the facts on the conversation. The edge never waits on
// the shop, and the customer does not wait behind the backlog that made the
// edge shed. ok is false when m is not an order question or storing fails
// (the caller goes on shedding).
func (e *Edge) answerOrderShed(ctx context.Context, m *peakdesk.Message, key string) (accepted, bool) {
	if e.cfg.Orders == nil || e.cfg.ReplyWebhook == nil {
		return accepted{}, false
	}
	text, actions, ok, err := e.cfg.Orders.ShedOrder(ctx, m)
	if err != nil {
		e.log.WarnContext(ctx, "a shed order question could not be followed up", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
	}
	if !ok || err != nil {
		return accepted{}, false
	}
	// A repeat of a message accepted (or answered) before gets its first
	// result, not a second answer.
	if key != "" {
		if st, ok := e.knownMessage(ctx, m); ok {
			return stateResult(m.ID, st), true
		}
	}
	reply := &peakdesk.Reply{ID: newReplyID(), ShopID: m.ShopID, ConversationID: m.ConversationID, UserID: m.UserID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceOrder, FollowUp: true}
	stored, human := e.storeShedAnswer(ctx, m, reply, actions...)
	if human {
		e.metrics.shed.WithLabelValues(string(m.Priority), "human").Inc()
		return accepted{MessageID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
			Status: peakdesk.StatusQueued}, true
	}
	if stored == nil {
		return accepted{}, false
	}
	e.metrics.shed.WithLabelValues(string(m.Priority), "order").Inc()
	return accepted{MessageID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
		Status: peakdesk.StatusAnswered, Reply: stored}, true
}

// storeShedAnswer stores m answered by reply (with the actions it
// promises) and publishes the reply's event; nil when storing fails, or
// when m was stored before and is still queued. human reports that a
// human agent took the conversation after the edge looked: m was stored
// for the agent (and announced), without the answer.
func (e *Edge) storeShedAnswer(ctx context.Context, m *peakdesk.Message, reply *peakdesk.Reply, actions ...peakdesk.Action) (_ *peakdesk.Reply, human bool) {
	// Message and answer commit together, so no worker sees the message
	// unanswered.
	stored, existed, err := e.cfg.DB.SaveAnsweredMessage(ctx, m, reply, e.cfg.ReplyWebhook, actions...)
	switch {
	case errors.Is(err, storage.ErrHumanOwned):
		// Show it to the agents following the conversation at once, as a
		// worker does (best effort: the stored message and its webhook are
		// the record).
		st := peakdesk.MessageState{ID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
			Status: peakdesk.StatusQueued, Text: m.Text, CreatedAt: m.AcceptedAt}
		if err := queue.PublishDeskMessage(e.cfg.JS.Conn(), m.ShopID, &st); err != nil {
			e.log.WarnContext(ctx, "showing a message to the agents live failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
		}
		return nil, true
	case err != nil:
		e.log.WarnContext(ctx, "storing a shed answer failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
		return nil, false
	case existed:
		return stored, false // an idempotent repeat: its answer, or nil while it is still queued
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := queue.PublishReplyEvent(pctx, e.cfg.JS, stored); err != nil {
		// The answer is stored and returned inline; only event streams miss it.
		e.log.WarnContext(ctx, "publishing a shed answer's event failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
	}
	return stored, false
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
