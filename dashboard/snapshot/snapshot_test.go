package snapshot_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk/dashboard/snapshot"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type worker struct {
	reg      *prometheus.Registry
	inflight prometheus.Gauge
	answers  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	rep      *snapshot.Reporter
}

func newWorker(t *testing.T, prefix, name string, clk *clock) *worker {
	t.Helper()
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	w := &worker{reg: prometheus.NewRegistry(),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "peakdesk_worker_inflight"}),
		answers:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_answers_total"}, []string{"priority", "source"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "peakdesk_answer_latency_seconds",
			Buckets: []float64{0.1, 0.2, 0.4, 0.8, 1.6}}, []string{"priority"}),
	}
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "go_not_chosen"})
	w.reg.MustRegister(w.inflight, w.answers, w.latency, other)
	w.rep, err = snapshot.NewReporter(snapshot.Config{Gatherer: w.reg, Redis: rdb, Prefix: prefix, Process: name,
		Interval: time.Second, Window: 10 * time.Second, TTL: time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// Two worker processes publish; the console reads both and adds them up:
// gauges summed, counter rates over the window, latency quantiles from the
// merged histograms of the window only. A stopped process disappears.
func TestProcessesPublishAndTheConsoleAddsThemUp(t *testing.T) {
	t.Parallel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "pdtest:" + hex.EncodeToString(b[:]) + ":"
	clk := &clock{now: time.Now()}
	ctx := context.Background()
	a, c := newWorker(t, prefix, "a", clk), newWorker(t, prefix, "c", clk)

	// Before the window: slow answers that must not count.
	a.latency.WithLabelValues("p0").Observe(1.5)
	a.rep.Report(ctx)
	c.rep.Report(ctx)

	clk.Advance(10 * time.Second)
	a.inflight.Set(3)
	c.inflight.Set(4)
	a.answers.WithLabelValues("p0", "llm").Add(50)
	c.answers.WithLabelValues("p0", "faq").Add(30)
	for range 99 {
		a.latency.WithLabelValues("p0").Observe(0.15)
	}
	for range 5 {
		c.latency.WithLabelValues("p0").Observe(0.7)
	}
	a.rep.Report(ctx)
	c.rep.Report(ctx)

	rdb, _ := storage.OpenRedis(storagetest.RedisURL())
	defer rdb.Close()
	snaps, err := snapshot.Read(ctx, rdb, prefix, clk.Now(), 5*time.Second)
	if err != nil || len(snaps) != 2 {
		t.Fatalf("read: %d snapshots, %v", len(snaps), err)
	}
	v := snapshot.View(snaps)
	if got := snapshot.Total(v.Sum("peakdesk_worker_inflight", "")); got != 7 {
		t.Errorf("in flight %v, want 7", got)
	}
	if v.Processes("go_not_chosen") != 0 {
		t.Error("a family not chosen was published")
	}
	rates := v.Rate("peakdesk_answers_total", "source")
	if rates["llm"] != 5 || rates["faq"] != 3 {
		t.Errorf("rates %v, want llm 5/s and faq 3/s", rates)
	}
	p50 := v.Quantile("peakdesk_answer_latency_seconds", "priority", 0.5)["p0"]
	p99 := v.Quantile("peakdesk_answer_latency_seconds", "priority", 0.99)["p0"]
	if p50 <= 0.1 || p50 > 0.2 || p99 <= 0.4 || p99 > 0.8 || math.IsNaN(p99) {
		t.Errorf("p50 %v want within (0.1, 0.2], p99 %v want within (0.4, 0.8]", p50, p99)
	}

	if err := a.rep.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a.rep.Stop()
	snaps, _ = snapshot.Read(ctx, rdb, prefix, clk.Now(), 5*time.Second)
	if len(snaps) != 1 || snaps[0].Process != "c" {
		t.Fatalf("after a stopped: %+v", snaps)
	}
	// A process that stops reporting ages out.
	clk.Advance(10 * time.Second)
	if snaps, _ = snapshot.Read(ctx, rdb, prefix, clk.Now(), 5*time.Second); len(snaps) != 0 {
		t.Fatalf("stale snapshots read: %d", len(snaps))
	}
}
