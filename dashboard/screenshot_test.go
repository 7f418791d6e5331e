package dashboard_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/snapshot"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

var updateScreenshots = flag.Bool("update-screenshots", false, "write the console's screenshots to docs/")

// TestScreenshots takes the README's pictures of the console (overview,
// outbox list, an action's detail) at 1440×900 on a desk with history:
// go test -run TestScreenshots ./dashboard/ -update-screenshots
func TestScreenshots(t *testing.T) {
	if !*updateScreenshots {
		t.Skip("run with -update-screenshots to write docs/console-*.png")
	}
	b := setup(t, bundleOptions{sampleInterval: 500 * time.Millisecond})
	ctx := context.Background()
	sim := shopsim.New(shopsim.Faults{Down: true}, []byte("whsec"))
	b.startRelay(t, sim)

	// An hour and a day of samples with a Double 11 midnight peak.
	now := time.Now()
	for i := 24 * 60; i > 0; i-- {
		at := now.Add(-time.Duration(i) * time.Minute)
		x := float64(i)
		peak := math.Exp(-math.Pow((x-50)/12, 2))
		wave := 1 + 0.3*math.Sin(x/9)
		row := storage.SampleRow{At: at,
			BacklogP0: 40 * peak, BacklogP1: 900*peak + 20*wave, BacklogP2: 2600*peak + 60*wave,
			InFlight: 40 + 180*peak, Concurrency: 64 + 160*peak, AnswersPerS: 120*wave + 900*peak,
			P99P0: 0.6 + 0.5*peak, P99P1: 0.9 + 1.4*peak, P99P2: 1.2 + 4*peak,
			LLM429PerS: 12 * peak, FallbacksPerS: 2 + 30*peak, OutboxDue: 30 + 400*peak, OutboxDead: 12 + 40*peak, DLQ: 3 + 5*peak,
			Data: json.RawMessage(`{}`)}
		if err := b.db.InsertSample(ctx, row); err != nil {
			t.Fatal(err)
		}
	}
	// A worker process's live numbers.
	reg := prometheus.NewRegistry()
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{Name: "peakdesk_worker_inflight"})
	limit := prometheus.NewGauge(prometheus.GaugeOpts{Name: "peakdesk_worker_concurrency_limit"})
	answers := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_answers_total"}, []string{"priority", "source"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "peakdesk_answer_latency_seconds",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, []string{"priority", "source"})
	breaker := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "peakdesk_llm_breaker_state"}, []string{"provider", "model"})
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_llm_calls_total"}, []string{"model", "outcome"})
	fallbacks := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_llm_fallbacks_total"}, []string{"source"})
	reg.MustRegister(inflight, limit, answers, latency, breaker, calls, fallbacks)
	inflight.Set(57)
	limit.Set(96)
	breaker.WithLabelValues("api.example.com", "qwen-max").Set(0)
	breaker.WithLabelValues("api.example.com", "qwen-turbo").Set(2)
	rep, err := snapshot.NewReporter(snapshot.Config{Gatherer: reg, Redis: b.rdb, Prefix: b.prefix + "snap:",
		Interval: 200 * time.Millisecond, Window: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rep.Stop)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for _, p := range []string{"p0", "p1", "p2", "p2"} {
				src := []string{"llm", "llm", "llm", "faq", "cache", "llm_secondary"}[i%6]
				answers.WithLabelValues(p, src).Inc()
				latency.WithLabelValues(p, src).Observe(0.3 + float64(i%7)*0.15*float64(1+len(p)%3))
			}
			calls.WithLabelValues("qwen-max", "ok").Add(3)
			if i%9 == 0 {
				calls.WithLabelValues("qwen-max", "rate_limited").Inc()
				fallbacks.WithLabelValues("faq").Inc()
			}
		}
	}()

	// Outbox actions in every state, some dead with real attempts.
	for i := range 3 {
		payload, _ := json.Marshal(map[string]any{"order_id": fmt.Sprintf("2025111%d0042", i), "user_id": "u2",
			"amount_cents": 3990 + 1000*i, "reason": "parcel arrived damaged"})
		if _, err := b.db.EnqueueActions(ctx, []peakdesk.Action{{ShopID: "demo", ConversationID: fmt.Sprintf("%032x", 0xabc+i),
			Kind: peakdesk.ActionRefundRequest, Payload: payload, IdempotencyKey: fmt.Sprintf("shot-refund-%d", i), MaxAttempts: 4}}); err != nil {
			t.Fatal(err)
		}
	}
	storagetest.WaitFor(t, "the refunds to die", 30*time.Second, func() bool {
		n, err := b.db.CountActions(ctx, "demo", storage.ActionFilter{Q: "damaged"}, []peakdesk.ActionState{peakdesk.ActionDead})
		return err == nil && n == 3
	})
	b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 40, peakdesk.ActionSucceeded, "")
	b.seedActions(t, "other", peakdesk.ActionCouponIssue, 6, peakdesk.ActionDead, "shop answered 422 invalid_argument: coupon budget of the day is used up")
	b.seedActions(t, "demo", peakdesk.ActionRefundRequest, 4, peakdesk.ActionRetrying, "shop answered 504 gateway_timeout: upstream payment service timed out")
	b.seedActions(t, "other", peakdesk.ActionCouponIssue, 3, peakdesk.ActionPending, "")
	time.Sleep(2 * time.Second) // let the reporter's window fill; the picture is all this waits for

	browser := newBrowser(t, 1440, 900)
	b.loginTab(t, browser, b.operator(t, storage.RoleAdmin, ""))
	dir := filepath.Join("..", "docs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := func(name, url, waitSel string) {
		var png []byte
		run(t, tab(t, browser), name, cdppage.BringToFront(), chromedp.EmulateViewport(1440, 900), chromedp.Navigate(url),
			chromedp.WaitVisible(waitSel, chromedp.ByQuery), chromedp.Sleep(time.Second), chromedp.CaptureScreenshot(&png))
		if err := os.WriteFile(filepath.Join(dir, "console-"+name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shot("outbox", b.url+"/console/outbox", "#actions")
	var dead []peakdesk.Action
	dead, err = b.db.ListActions(ctx, "demo", storage.ActionFilter{Q: "damaged", State: peakdesk.ActionDead}, 0, 1)
	if err != nil || len(dead) == 0 {
		t.Fatal(err)
	}
	shot("action", fmt.Sprintf("%s/console/outbox/%d", b.url, dead[0].ID), "#attempts")
	shot("overview", b.url+"/console/", "#c-trouble canvas")
	// The same in Chinese (the switch is a cookie the tabs share).
	shot("overview-zh", b.url+"/console/lang?to=zh&back=/console/", "#c-trouble canvas")
	_ = strings.TrimSpace
}
