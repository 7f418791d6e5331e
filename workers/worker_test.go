package workers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// testBundle is the real services one test's workers share: an embedded
// JetStream server with peakdesk's topology, a fresh Postgres database with
// shop "demo", Redis, the simulated LLM behind a recorder that notes every
// call in arrival order, and the simulated shop API with the tools on it.
type testBundle struct {
	js      jetstream.JetStream
	db      *storage.DB
	pool    *pgxpool.Pool // for assertions
	rdb     *redis.Client
	sim     *llmsim.Sim
	llmURL  string
	calls   *callLog
	shop    *shopsim.Sim
	tools   *outbox.Tools // offered when a test sets Config.Tools
	ackWait time.Duration
	key     string // provider budget and Redis key prefix, unique per test
	// transport gives each worker's Answerer an LLMTransport.
	transport bool
}

type bundleOpts struct {
	faults     llmsim.Faults
	ackWait    time.Duration
	maxDeliver int
	dbConns    int32
	// transport puts each worker's LLM calls on its own LLMTransport, as
	// in production (the provider budget and the adaptive limit).
	transport bool
	// tracer, when set, sees every query of the workers' pool.
	tracer pgx.QueryTracer
}

// testPrices prices the simulator's model, so that replies have a cost.
var testPrices = llm.Prices{"sim": {InputPerMTok: 1, OutputPerMTok: 2}}

func setup(t testing.TB, o bundleOpts) *testBundle {
	t.Helper()
	ctx := context.Background()
	ns := storagetest.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if o.ackWait == 0 {
		o.ackWait = 3 * time.Second
	}
	if _, err := queue.EnsureTopology(ctx, js, queue.Topology{AckWait: o.ackWait, MaxDeliver: o.maxDeliver}); err != nil {
		t.Fatal(err)
	}
	dbURL := storagetest.DatabaseURL(t)
	var db *storage.DB
	if o.tracer != nil {
		db, err = storage.OpenTraced(ctx, dbURL, max(o.dbConns, 16), o.tracer)
	} else {
		db, err = storage.Open(ctx, dbURL, max(o.dbConns, 16))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.EnsureShop(ctx, "demo", "Demo"); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })

	sim := llmsim.New(o.faults)
	calls := &callLog{active: map[string]int{}, maxActive: map[string]int{}, called: make(chan struct{}, 1)}
	srv := httptest.NewServer(calls.wrap(sim))
	t.Cleanup(srv.Close)

	shopSim := shopsim.New(shopsim.Faults{}, []byte("whsec-test"))
	shopSrv := httptest.NewServer(shopSim)
	t.Cleanup(shopSrv.Close)
	shop, err := shopapi.New(shopapi.Config{DB: db, DefaultBaseURL: shopSrv.URL, Timeout: 5 * time.Second,
		AllowPrivate: true}) // the simulated shop listens on loopback
	if err != nil {
		t.Fatal(err)
	}
	tools, err := outbox.NewTools(outbox.ToolsConfig{DB: db, Shop: shop})
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{js: js, db: db, pool: pool, rdb: rdb, sim: sim, llmURL: srv.URL + "/v1", calls: calls,
		shop: shopSim, tools: tools, ackWait: o.ackWait, key: "test-" + newID(), transport: o.transport}
}

// start runs a Worker, with an Answerer of its own on the simulated LLM, as
// one worker process would; mod changes the test defaults of the worker and
// its limits. It stops when the test ends.
func (b *testBundle) start(t testing.TB, mod func(*Config, *LimitsConfig)) *Worker {
	t.Helper()
	w := b.worker(t, mod)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w
}

// worker returns the Worker start runs, not started: a test drives its
// handler itself.
func (b *testBundle) worker(t testing.TB, mod func(*Config, *LimitsConfig)) *Worker {
	t.Helper()
	// One registry per worker process, shared by its Answerer as in
	// production.
	reg := prometheus.NewRegistry()
	lc := LimitsConfig{Concurrency: 8, ProviderKey: b.key, Redis: b.rdb, Logger: storagetest.Logger(t),
		Registerer: reg}
	cfg := Config{
		JS: b.js, DB: b.db,
		Memory:        &storage.Memory{DB: b.db, Redis: b.rdb},
		Logger:        storagetest.Logger(t),
		Registerer:    reg,
		AckWait:       b.ackWait,
		SoftStop:      2 * time.Second,
		SweepInterval: 200 * time.Millisecond,
		SweepGrace:    500 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg, &lc)
	}
	limits, err := NewLimits(lc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Limits = limits
	hc := llm.NewHTTPClient()
	if b.transport {
		hc = &http.Client{Transport: NewLLMTransport(nil, limits)}
	}
	ans, err := answer.New(answer.Config{
		DB: b.db, Redis: b.rdb,
		Provider:   llm.Provider{BaseURL: b.llmURL, Models: []string{"sim"}},
		Prices:     testPrices,
		HTTPClient: hc,
		LLM:        llm.CallerConfig{CallTimeout: 10 * time.Second},
		KeyPrefix:  "pd:" + b.key + ":",
		Logger:     storagetest.Logger(t),
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ans.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ans.Stop) // after the worker's Stop (cleanups run last first)
	cfg.Answerer = ans
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// message returns a message of a new conversation unless conv is given.
// Its text starts with a tag the call log reads: [prio c:conv] text.
func message(prio peakdesk.Priority, conv, text string) peakdesk.Message {
	if conv == "" {
		conv = newConvID()
	}
	return peakdesk.Message{
		ID: newID(), ShopID: "demo", ConversationID: conv, UserID: "u-" + conv[:8],
		Text:     fmt.Sprintf("[%s c:%s] %s", prio, conv, text),
		Priority: prio, AcceptedAt: time.Now(),
	}
}

// newConvID returns a new conversation id without five digits in a row:
// the tag of a test message must reach the LLM as it is, not taken for a
// phone or card number and masked.
func newConvID() string {
	for {
		if id := newID(); !hasDigitRun(id, 5) {
			return id
		}
	}
}

// publish queues msgs as the edge would, waiting for JetStream's acks.
func (b *testBundle) publish(t testing.TB, msgs ...peakdesk.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var futures []jetstream.PubAckFuture
	for i, m := range msgs {
		// Bounded in flight: an unbounded burst stalls the async
		// publisher on a busy machine.
		if i > 0 && i%256 == 0 {
			select {
			case <-b.js.PublishAsyncComplete():
			case <-ctx.Done():
				t.Fatal("publish: no acks in time")
			}
		}
		data, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		nm := nats.NewMsg(queue.InSubject(m.Priority, m.ShopID))
		nm.Data = data
		nm.Header.Set(jetstream.MsgIDHeader, m.ShopID+":"+m.ID)
		f, err := b.js.PublishMsgAsync(nm)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publish: no acks in time")
	}
	for _, f := range futures {
		select {
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		default:
		}
	}
}

// waitParked waits until every priority consumer has n pull requests
// waiting at the server: n idle workers, each with its pulls parked.
func (b *testBundle) waitParked(t testing.TB, n int) {
	t.Helper()
	storagetest.WaitFor(t, fmt.Sprintf("%d parked pulls per priority", n), 10*time.Second, func() bool {
		for _, p := range peakdesk.Priorities {
			cons, err := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerName(p))
			if err != nil {
				t.Fatal(err)
			}
			info, err := cons.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if info.NumWaiting < n {
				return false
			}
		}
		return true
	})
}

// answered counts the messages among ids that have a reply.
func (b *testBundle) answered(t testing.TB, ids []string) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM messages WHERE id = ANY($1) AND reply_id IS NOT NULL`, ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func ids(msgs []peakdesk.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

// callLog records the simulated LLM's calls in arrival order, and how many
// calls of each conversation (by the tag in the text) ran at once.
type callLog struct {
	mu        sync.Mutex
	calls     []llmCall
	active    map[string]int
	maxActive map[string]int
	// failAfterTools answers 503 to every call that carries tool results:
	// the LLM fails once its tools have run.
	failAfterTools atomic.Bool
	// called is signalled (without blocking) after each call is noted.
	called chan struct{}
}

type llmCall struct {
	// users are the user turns after the last assistant turn: the messages
	// being answered; history is everything before them.
	users   []string
	history []string
	conv    string
	prio    string
	// trace is the call's traceparent header.
	trace string
}

var tagRE = regexp.MustCompile(`^\[(p[0-2]) c:([0-9a-f]+)\]`)

func (l *callLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" {
			next.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			Messages []struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"messages"`
		}
		_ = json.Unmarshal(body, &req)
		c := llmCall{trace: r.Header.Get(peakdesk.TraceHeader)}
		for _, m := range req.Messages {
			if m.Role == "tool" && l.failAfterTools.Load() {
				http.Error(w, `{"error":{"message":"down after tools","type":"server_error"}}`, http.StatusServiceUnavailable)
				return
			}
			switch m.Role {
			case "user":
				c.users = append(c.users, m.Content)
			case "assistant":
				c.history = append(c.history, c.users...)
				c.history = append(c.history, "assistant: "+m.Content)
				c.users = nil
			}
		}
		if len(c.users) > 0 {
			if sm := tagRE.FindStringSubmatch(c.users[len(c.users)-1]); sm != nil {
				c.prio, c.conv = sm[1], sm[2]
			}
		}
		l.mu.Lock()
		l.calls = append(l.calls, c)
		l.active[c.conv]++
		l.maxActive[c.conv] = max(l.maxActive[c.conv], l.active[c.conv])
		l.mu.Unlock()
		select {
		case l.called <- struct{}{}:
		default:
		}
		defer func() {
			l.mu.Lock()
			l.active[c.conv]--
			l.mu.Unlock()
		}()
		next.ServeHTTP(w, r)
	})
}

func (l *callLog) snapshot() []llmCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]llmCall(nil), l.calls...)
}

func (l *callLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls)
}

func (l *callLog) max(conv string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxActive[conv]
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
