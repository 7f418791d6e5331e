package workers

import (
	"time"

	"context"
	"fmt"
	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// dbCounter is a pgx tracer that counts what the worker asks of Postgres:
// transactions (an explicit BEGIN, or a statement or batch outside one, which
// is a transaction of its own), round trips (a statement, or a whole batch)
// and statements by their first words.
type dbCounter struct {
	mu         sync.Mutex
	txs        int
	roundTrips int
	stmts      map[string]int
	// bgConn: the transaction open on the connection is background work.
	bgConn map[*pgx.Conn]bool
	// background: the transactions and round trips of the statements
	// that run by the clock, not per message (see background).
	bgTxs, bgRoundTrips int
}

func newDBCounter() *dbCounter {
	return &dbCounter{stmts: map[string]int{}, bgConn: map[*pgx.Conn]bool{}}
}

// background are the first words of statements the worker and its answerer
// run by the clock, not per message: the relays' wake-up (at most every
// 25 ms), the cached reads of shop settings, the heartbeat.
var background = []string{
	"SELECT pg_notify(",
	"begin isolation level repeatable read read only",
	"SELECT currency, llm_max_tokens",
	"SELECT language FROM shops",
	"SELECT shop_id, base_url, api_key",
	"SELECT extract(epoch FROM handoff_sla)",
	"SELECT shop_id, version FROM faq_versions",
	"WITH held AS (",
}

func isBackground(key string) bool {
	for _, p := range background {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

var spaces = regexp.MustCompile(`\s+`)

func stmtKey(sql string) string {
	s := strings.TrimSpace(spaces.ReplaceAllString(sql, " "))
	if len(s) > 70 {
		s = s[:70]
	}
	return s
}

func (c *dbCounter) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roundTrips++
	key := stmtKey(d.SQL)
	c.stmts[key]++
	bg := isBackground(key) || (conn.PgConn().TxStatus() != 'I' && c.bgConn[conn])
	if bg {
		c.bgRoundTrips++
	}
	if conn.PgConn().TxStatus() == 'I' && !strings.HasPrefix(strings.ToLower(key), "commit") &&
		!strings.HasPrefix(strings.ToLower(key), "rollback") {
		c.txs++ // BEGIN, or a statement on its own
		if bg {
			c.bgTxs++
		}
		c.bgConn[conn] = bg
	}
	return ctx
}

func (c *dbCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *dbCounter) TraceBatchStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roundTrips++
	if conn.PgConn().TxStatus() == 'I' {
		c.txs++
	}
	if conn.PgConn().TxStatus() != 'I' && c.bgConn[conn] {
		c.bgRoundTrips++
	}
	for _, q := range d.Batch.QueuedQueries {
		c.stmts["(batch) "+stmtKey(q.SQL)]++
	}
	return ctx
}

func (c *dbCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *dbCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// reset zeroes the counts and returns what they were, background work
// left out.
func (c *dbCounter) reset() (txs, roundTrips int, stmts map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	txs, roundTrips, stmts = c.txs-c.bgTxs, c.roundTrips-c.bgRoundTrips, c.stmts
	c.txs, c.roundTrips, c.stmts, c.bgTxs, c.bgRoundTrips = 0, 0, map[string]int{}, 0, 0
	return txs, roundTrips, stmts
}

func (c *dbCounter) report(stmts map[string]int, n int) string {
	keys := make([]string, 0, len(stmts))
	for k := range stmts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return stmts[keys[i]] > stmts[keys[j]] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%6.2f  %s\n", float64(stmts[k])/float64(n), k)
	}
	return b.String()
}

// The database work per answer stays small: a queued message's claim, its
// turn's reply (in a transaction shared with the turns ready at the same
// time) and what comes with it. Counted on the workers' own pool (the relay
// is not running here), without the work that runs by the clock (the
// sweeper is off; see background).
func TestDatabaseWorkPerAnswer(t *testing.T) {
	counter := newDBCounter()
	// A long AckWait: no heartbeats in the counts.
	b := setup(t, bundleOpts{tracer: counter, ackWait: 30 * time.Second})
	const n = 120
	msgs := make([]peakdesk.Message, n)
	for i := range msgs {
		msgs[i] = message(peakdesk.P1, "", "hello")
	}
	b.publish(t, msgs...)
	counter.reset()
	b.start(t, func(c *Config, l *LimitsConfig) { l.Concurrency = 32; c.SweepInterval = time.Hour })
	storagetest.WaitFor(t, "every message answered", time.Minute, func() bool { return b.answered(t, ids(msgs)) == n })
	txs, rts, stmts := counter.reset()
	perTx, perRT := float64(txs)/n, float64(rts)/n
	t.Logf("per answer: %.2f transactions, %.2f round trips\n%s", perTx, perRT, counter.report(stmts, n))
	// Before group commit and the cached empty history: 3.1 transactions
	// and 6.1 round trips per answer (the claim, the history read, BEGIN,
	// the turn's batch, its webhook, COMMIT; the gathering top-up).
	// Now: the claim, the turn's batch and webhook, at most one BEGIN and
	// COMMIT (fewer the more turns share a group), the top-up.
	if perTx > 2.6 {
		t.Errorf("%.2f transactions per answer; want at most 2.6", perTx)
	}
	if perRT > 5.6 {
		t.Errorf("%.2f round trips per answer; want at most 5.6", perRT)
	}
	if n := stmts["SELECT role, text, at FROM ( SELECT 'user' AS role, m.text, m.accepted"]; n > 0 {
		t.Errorf("%d history reads from Postgres; new conversations have none", n)
	}
}
