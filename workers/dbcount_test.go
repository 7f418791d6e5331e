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
}

func newDBCounter() *dbCounter { return &dbCounter{stmts: map[string]int{}} }

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
	if conn.PgConn().TxStatus() == 'I' && !strings.HasPrefix(strings.ToLower(key), "commit") &&
		!strings.HasPrefix(strings.ToLower(key), "rollback") {
		c.txs++ // BEGIN, or a statement on its own
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
	for _, q := range d.Batch.QueuedQueries {
		c.stmts["(batch) "+stmtKey(q.SQL)]++
	}
	return ctx
}

func (c *dbCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *dbCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// reset zeroes the counts and returns what they were.
func (c *dbCounter) reset() (txs, roundTrips int, stmts map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	txs, roundTrips, stmts = c.txs, c.roundTrips, c.stmts
	c.txs, c.roundTrips, c.stmts = 0, 0, map[string]int{}
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
// turn's reply and what comes with it. The counts are of the workers' own
// pool (the relay is not running here).
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
	b.start(t, func(c *Config, l *LimitsConfig) { l.Concurrency = 32 })
	storagetest.WaitFor(t, "every message answered", time.Minute, func() bool { return b.answered(t, ids(msgs)) == n })
	txs, rts, stmts := counter.reset()
	perTx, perRT := float64(txs)/n, float64(rts)/n
	t.Logf("per answer: %.2f transactions, %.2f round trips\n%s", perTx, perRT, counter.report(stmts, n))
	// Before group commit and the cached empty history: 4.0 transactions
	// and 7.3 round trips per answer (the claim, the history read, BEGIN,
	// the turn's batch, its webhook, COMMIT, the answer's settings).
	// Now: the claim, the turn's batch and webhook, a share of a group's
	// BEGIN and COMMIT, and the answerer's cached reads.
	if perTx > 3.2 {
		t.Errorf("%.2f transactions per answer; want at most 3.2", perTx)
	}
	if perRT > 6.2 {
		t.Errorf("%.2f round trips per answer; want at most 6.2", perRT)
	}
	if n := stmts["SELECT role, text, at FROM ( SELECT 'user' AS role, m.text, m.accepted"]; n > 0 {
		t.Errorf("%d history reads from Postgres; new conversations have none", n)
	}
}
