package dashboard_test

import (
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// seedScale fills the database the way a busy desk would: n outbox
// actions (1 % dead with an error, a few retrying, the retrying coupons
// retried by bulk operation 1), n messages in n/10
// conversations, n/2 replies and n/10 dead letters, a tenth of it all in
// shop "other". It uses generate_series, so a million rows take a minute
// or two rather than an hour.
func seedScale(t testing.TB, conn *pgx.Conn, n int) {
	t.Helper()
	ctx := context.Background()
	convs := max(n/10, 1)
	for _, q := range []string{
		`INSERT INTO conversations (id, shop_id, user_id, created_at, updated_at)
		SELECT md5('c' || g), CASE WHEN g % 10 = 0 THEN 'other' ELSE 'demo' END, 'u' || (g % 50000),
			now() - g * interval '1 second', now() - g * interval '1 second'
		FROM generate_series(1, $2) g WHERE $1 > 0`,
		`INSERT INTO messages (id, shop_id, conversation_id, user_id, text, priority, status, accepted_at)
		SELECT md5('m' || g), CASE WHEN (g % $2 + 1) % 10 = 0 THEN 'other' ELSE 'demo' END, md5('c' || (g % $2 + 1)),
			'u' || ((g % $2 + 1) % 50000), 'where is my parcel ' || g, (ARRAY['p0','p1','p2'])[g % 3 + 1], 'failed',
			now() - ($1 - g) * interval '100 milliseconds'
		FROM generate_series(1, $1) g`,
		`INSERT INTO replies (id, shop_id, conversation_id, text, source, model, prompt_tokens, completion_tokens,
			cost_micro_usd, created_at)
		SELECT md5('r' || g), CASE WHEN (g % $2 + 1) % 10 = 0 THEN 'other' ELSE 'demo' END, md5('c' || (g % $2 + 1)),
			'your parcel is on its way', 'llm', 'qwen-max', 120, 40, 90, now() - ($1 - g) * interval '200 milliseconds'
		FROM generate_series(1, $1 / 2) g`,
		`INSERT INTO outbox_actions (shop_id, conversation_id, kind, payload, idempotency_key, state, attempts,
			run_attempts, max_attempts, last_error, created_at, completed_at)
		SELECT CASE WHEN (g % $2 + 1) % 10 = 0 THEN 'other' ELSE 'demo' END, md5('c' || (g % $2 + 1)),
			(ARRAY['coupon.issue','refund.request','webhook.deliver','order.followup'])[g % 4 + 1],
			jsonb_build_object('order_id', (1000000 + g)::text, 'user_id', 'u' || (g % 50000),
				'amount_cents', g % 10000, 'reason', 'late parcel ' || left(md5(g::text), 8)),
			'scale-' || g,
			CASE WHEN g % 100 = 0 THEN 'dead' WHEN g % 1000 = 1 THEN 'retrying' ELSE 'succeeded' END, 3, 3, 5,
			CASE WHEN g % 100 = 0 THEN 'shop answered 503 unavailable: ' || left(md5(g::text), 10) ELSE '' END,
			now() - ($1 - g) * interval '100 milliseconds', now()
		FROM generate_series(1, $1) g`,
		`INSERT INTO outbox_attempts (action_id, n, relay, idempotency_key, started_at, ended_at, outcome, http_status,
			error, response_excerpt)
		SELECT a.id, k, 'relay-1', a.idempotency_key, a.created_at, a.created_at + interval '20 milliseconds',
			'failed', 503, a.last_error, '{"error":"unavailable"}'
		FROM outbox_actions a, generate_series(1, 3) k WHERE a.state = 'dead'`,
		`INSERT INTO dlq_entries (shop_id, message_id, conversation_id, priority, subject, in_seq, deliveries, reason, state)
		SELECT CASE WHEN (g % $2 + 1) % 10 = 0 THEN 'other' ELSE 'demo' END, md5('m' || g), md5('c' || (g % $2 + 1)),
			'p1', 'chat.in.p1.demo', g, 6, 'max deliveries; last error: llm timeout', CASE WHEN g % 100 = 0 THEN 'dead' ELSE 'redriven' END
		FROM generate_series(1, $1 / 10) g`,
		// One conversation in 200 handed to a human: waiting, or with an agent.
		`UPDATE conversations SET state = CASE WHEN right(id, 1) < '8' THEN 'waiting_human' ELSE 'assigned' END,
			agent = CASE WHEN right(id, 1) < '8' THEN '' ELSE 'agent@demo.example' END,
			waiting_priority = (ARRAY['p0','p1','p2'])[get_byte(decode(right(id, 2), 'hex'), 0) % 3 + 1],
			waiting_since = updated_at, assigned_at = CASE WHEN right(id, 1) < '8' THEN NULL ELSE updated_at END
		WHERE left(id, 2) IN ('00', 'ff') AND $1 > 0`,
		// Bulk operation 1 retried the retrying coupons.
		`INSERT INTO operator_audit (id, actor, scope, shop, action, target, details)
		OVERRIDING SYSTEM VALUE VALUES (1, 'scale@example.com', '*', '', 'outbox.bulk_retry', 'filter', '{}')`,
		`SELECT setval(pg_get_serial_sequence('operator_audit', 'id'), (SELECT max(id) FROM operator_audit))`,
		`UPDATE outbox_actions SET bulk_op = 1 WHERE state = 'retrying' AND kind = 'coupon.issue' AND $1 > 0`,
		`ANALYZE`,
	} {
		var args []any
		switch {
		case strings.Contains(q, "$2"):
			args = []any{n, convs}
		case strings.Contains(q, "$1"):
			args = []any{n}
		}
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			t.Fatalf("seed: %v\n%s", err, q)
		}
	}
}

// consolePages are the list and detail pages at scale, for a platform
// operator and for a shop's operator ("shop:" prefix).
func consolePages(n int) []string {
	convs := max(n/10, 1)
	deadOrder := strconv.Itoa(1000000 + 500)
	return []string{
		"/console/outbox",
		"/console/outbox?state=dead",
		"/console/outbox?kind=refund.request",
		"/console/outbox?state=dead&kind=coupon.issue",
		"/console/outbox?shop=other&state=dead",
		"/console/outbox?state=retrying&kind=coupon.issue",
		"/console/outbox?q=unavailable",
		"/console/outbox?q=" + deadOrder,
		"/console/outbox?from=2020-01-01T00%3A00&to=2020-01-02T00%3A00",
		"/console/outbox/bulk?op=retry&state=dead&kind=refund.request",
		"/console/outbox/progress?bulk=1",
		"/console/outbox/500",
		"/console/dlq",
		"/console/dlq?state=",
		"/console/dlq?shop=other",
		"/console/dlq/100",
		"/console/conversations?q=u4242",
		"/console/conversations?q=" + md5hex("m77"),
		"/console/conversations?q=" + deadOrder,
		"/console/conversations/" + md5hex("c"+strconv.Itoa(convs/2)),
		"/console/audit",
		"/console/inbox",
		"/console/inbox/live",
		"/console/inbox/" + md5hex("c"+strconv.Itoa(convs/2)),
		"shop:/console/inbox",
		"shop:/console/overview/live",
		"shop:/console/outbox",
		"shop:/console/outbox?state=dead",
		"shop:/console/dlq",
		"shop:/console/conversations?q=u4242",
	}
}

// queryLog records the SQL the console runs while serving a traced
// request.
type queryLog struct {
	mu      sync.Mutex
	queries []tracedQuery
}

type tracedQuery struct {
	page string
	sql  string
	args []any
}

type traceKey struct{}

func (l *queryLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if page, ok := ctx.Value(traceKey{}).(string); ok {
		l.mu.Lock()
		l.queries = append(l.queries, tracedQuery{page: page, sql: d.SQL, args: d.Args})
		l.mu.Unlock()
	}
	return ctx
}

func (l *queryLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// bigTables are the tables that grow with traffic.
var bigTables = map[string]bool{"outbox_actions": true, "outbox_attempts": true, "messages": true, "replies": true,
	"conversations": true, "dlq_entries": true}

// Every query behind the console's list and detail pages is answered from
// an index: EXPLAIN on a seeded, analyzed database shows no sequential
// scan of a table that grows with traffic.
func TestPageQueriesUseIndexesNotSeqScans(t *testing.T) {
	t.Parallel()
	log := &queryLog{}
	b := setup(t, bundleOptions{tracer: log, sampleInterval: time.Hour, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), traceKey{}, r.URL.RequestURI())))
		})
	}})
	const n = 50_000
	seedScale(t, b.conn, n)
	platform, _ := b.loggedIn(t, storage.RoleAdmin, "")
	shop, _ := b.loggedIn(t, storage.RoleOperator, "demo")
	log.mu.Lock()
	log.queries = nil
	log.mu.Unlock()
	for _, p := range consolePages(n) {
		c := platform
		if rest, ok := strings.CutPrefix(p, "shop:"); ok {
			c, p = shop, rest
		}
		if r := c.get(p); r.status != http.StatusOK && r.status != http.StatusSeeOther {
			t.Fatalf("%s: %d", p, r.status)
		}
	}
	log.mu.Lock()
	queries := log.queries
	log.mu.Unlock()
	checked := 0
	for _, q := range queries {
		if !strings.HasPrefix(strings.TrimSpace(q.sql), "SELECT") && !strings.HasPrefix(strings.TrimSpace(q.sql), "WITH") {
			continue
		}
		// The recount of a shop's succeeded actions reads most of its rows
		// whatever the plan; it runs once per shop every
		// storage.SucceededCountEvery, not per page.
		if strings.Contains(q.sql, "shop_id = $1 AND state IN ('succeeded') GROUP BY") {
			continue
		}
		var plan []byte
		if err := b.conn.QueryRow(context.Background(), "EXPLAIN (FORMAT JSON) "+q.sql, q.args...).Scan(&plan); err != nil {
			t.Fatalf("explain %s: %v\n%s", q.page, err, q.sql)
		}
		if rel := seqScanOf(t, plan); rel != "" {
			t.Errorf("%s: sequential scan of %s\n%s\n%s", q.page, rel, q.sql, plan)
		}
		checked++
	}
	if checked < len(consolePages(n)) {
		t.Fatalf("only %d queries checked", checked)
	}
}

// seqScanOf returns a big table the plan scans sequentially, or "".
func seqScanOf(t testing.TB, plan []byte) string {
	var doc []struct{ Plan map[string]any }
	if err := json.Unmarshal(plan, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(node map[string]any) string
	walk = func(node map[string]any) string {
		if node["Node Type"] == "Seq Scan" {
			if rel, _ := node["Relation Name"].(string); bigTables[rel] {
				return rel
			}
		}
		children, _ := node["Plans"].([]any)
		for _, c := range children {
			if m, ok := c.(map[string]any); ok {
				if rel := walk(m); rel != "" {
					return rel
				}
			}
		}
		return ""
	}
	for _, d := range doc {
		if rel := walk(d.Plan); rel != "" {
			return rel
		}
	}
	return ""
}

// BenchmarkConsolePages measures the console's list and detail pages on
// 1,000,000 outbox actions and 1,000,000 messages (PEAKDESK_BENCH_ROWS
// changes the size): each sub-benchmark is one page, served over HTTP to a
// logged-in operator.
//
//	go test -run '^$' -bench ConsolePages -benchtime 20x ./dashboard/
func BenchmarkConsolePages(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("PEAKDESK_BENCH_ROWS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	bundle := setup(b, bundleOptions{sampleInterval: time.Hour, dbURL: storagetest.DatabaseURL(b)})
	start := time.Now()
	seedScale(b, bundle.conn, n)
	b.Logf("seeded %d actions and messages in %v", n, time.Since(start).Round(time.Second))
	platform, _ := bundle.loggedIn(b, storage.RoleAdmin, "")
	shop, _ := bundle.loggedIn(b, storage.RoleOperator, "demo")
	for _, p := range consolePages(n) {
		c := platform
		path := p
		if rest, ok := strings.CutPrefix(p, "shop:"); ok {
			c, path = shop, rest
		}
		c.t = b
		b.Run(strings.ReplaceAll(p, "/", "_"), func(b *testing.B) {
			c.t = b
			c.get(path) // warm
			b.ResetTimer()
			for range b.N {
				if r := c.get(path); r.status != http.StatusOK && r.status != http.StatusSeeOther {
					b.Fatalf("%s: %d", path, r.status)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/page")
		})
	}
}

// BenchmarkOutboxCounts measures the counts behind a shop operator's
// overview and a bulk operation's progress on the seeded database (the
// shop "demo" holds 90 % of it): counting every state at once, as a
// refresh did before the succeeded count was kept apart; a refresh now
// (every state but succeeded, which is recounted every
// storage.SucceededCountEvery); the progress of bulk operation 1, and what
// its panel counted before.
//
//	PEAKDESK_BENCH_ROWS=1000000 go test -run '^$' -bench OutboxCounts -benchtime 20x ./dashboard/
func BenchmarkOutboxCounts(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("PEAKDESK_BENCH_ROWS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	bundle := setup(b, bundleOptions{sampleInterval: time.Hour, dbURL: storagetest.DatabaseURL(b)})
	seedScale(b, bundle.conn, n)
	ctx := context.Background()
	for _, bm := range []struct {
		name string
		run  func() error
	}{
		{"shop-every-state", func() error { _, err := bundle.db.ShopActionCounts(ctx, "demo", 0); return err }},
		{"shop-refresh", func() error {
			_, err := bundle.db.ShopActionCounts(ctx, "demo", storage.SucceededCountEvery)
			return err
		}},
		{"bulk-progress", func() error { _, err := bundle.db.BulkProgress(ctx, storage.AllShops, 1); return err }},
		// What the progress panel counted before: every action of the
		// filter's kind.
		{"kind-every-state", func() error {
			_, err := bundle.db.CountActions(ctx, storage.AllShops, storage.ActionFilter{Kind: peakdesk.ActionCouponIssue},
				peakdesk.ActionStates)
			return err
		}},
	} {
		b.Run(bm.name, func(b *testing.B) {
			if err := bm.run(); err != nil { // warm
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if err := bm.run(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/count")
		})
	}
}

func md5hex(s string) string {
	return fmt.Sprintf("%x", md5sum([]byte(s)))
}

func md5sum(b []byte) [16]byte { return md5.Sum(b) }
