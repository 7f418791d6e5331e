package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// The order drill, short (make drill runs the long one): customers ask
// about their orders in Chinese and English, with and without numbers,
// while the shop API goes down and comes back. Every customer gets a first
// reply and exactly one final answer, our texts in their
// language — a Chinese customer's follow-up in Chinese; with the LLM down
// every one of them is answered from the shop's data.
func TestOrderDrillShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the order drill takes about 15 s")
	}
	for _, llmDown := range []bool{false, true} {
		name := map[bool]string{false: "llm up", true: "llm down"}[llmDown]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DATABASE_URL": storagetest.DatabaseURL(t), "REDIS_URL": storagetest.RedisURL()}
			res, err := drillOrders(context.Background(), drillConfig{
				Rate: 4, Duration: 5 * time.Second, OutageAt: time.Second, OutageFor: 2500 * time.Millisecond,
				// No wall-clock target here (the machine is shared): the
				// budget and deadline only bound the wait; make drill
				// reports the message's budget.
				LLMDown: llmDown, FirstBudget: 90 * time.Second, Deadline: 90 * time.Second, Linger: time.Second,
				FollowUpStep: 300 * time.Millisecond, FollowUpMaxAttempts: 30,
				Getenv: func(k string) string { return env[k] }, OwnDatabase: true, Log: storagetest.LogWriter(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			res.Report.Print(&out)
			t.Log("\n" + out.String())
			if p := res.problem(); p != "" {
				t.Fatal(p)
			}
			rep := res.Report
			if !llmDown {
				return // whether the LLM looked an order up during the outage is up to its timing
			}
			// With the LLM down every question meets the shop (problem
			// checks that every answer is the shop's data, directly or by a
			// follow-up): those of the outage were told "checking" and
			// answered by a follow-up, Chinese ones among them, in Chinese
			// (problem checks the language).
			if rep.Checking == 0 || rep.FinalSources[peakdesk.SourceFollowUp] == 0 || rep.ChineseFollowUps == 0 {
				t.Fatalf("no follow-ups (Chinese ones: %d): the shop's outage went unnoticed", rep.ChineseFollowUps)
			}
		})
	}
}

// The drill runs against services on this machine only.
func TestDrillStaysOnThisMachine(t *testing.T) {
	t.Parallel()
	for u, ok := range map[string]bool{
		"postgres://peakdesk:peakdesk@127.0.0.1:5432/peakdesk": true,
		"redis://localhost:6379/0":                             true,
		"postgres://u@[::1]:5432/db":                           true,
		"postgres:///db?host=/var/run/postgresql":              true,
		"postgres://u@db.example.com:5432/db":                  false,
		"redis://10.0.0.7:6379/0":                              false,
		"host=db.example.com user=u":                           false,
	} {
		if err := loopbackOnly(u); (err == nil) != ok {
			t.Errorf("%s: %v", u, err)
		}
	}
	_, err := drillOrders(context.Background(), drillConfig{Rate: 1, Duration: time.Second, Deadline: time.Second,
		Getenv: func(k string) string {
			return map[string]string{"DATABASE_URL": "postgres://u@db.example.com/db"}[k]
		}, Log: storagetest.LogWriter(t)})
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Fatalf("a remote database: %v", err)
	}
}

// problem finds what the targets forbid: customers without a
// timely first reply, lost or answered twice, texts in the other language,
// and with the LLM down answers not from the shop's data.
func TestDrillProblem(t *testing.T) {
	t.Parallel()
	// A run where everything went right...
	ok := func() *drillResult {
		return &drillResult{LLMDown: true, Report: &loadtest.OrdersReport{Customers: 4, Accepted: 4, FirstInBudget: 4,
			FinalOnce: 4, FinalSources: map[string]int{peakdesk.SourceOrder: 3, peakdesk.SourceFollowUp: 1}}}
	}
	if p := ok().problem(); p != "" {
		t.Fatalf("a good run: %s", p)
	}
	// ...and each way it can go wrong.
	for name, spoil := range map[string]func(r *drillResult){
		"late":     func(r *drillResult) { r.Report.FirstInBudget, r.Report.FirstLate = 3, 1 },
		"lost":     func(r *drillResult) { r.Report.FinalOnce, r.Report.Lost = 3, 1 },
		"twice":    func(r *drillResult) { r.Report.FinalOnce, r.Report.Twice = 3, 1 },
		"language": func(r *drillResult) { r.Report.WrongLanguage = 1 },
		"faq": func(r *drillResult) {
			r.Report.FinalSources = map[string]int{peakdesk.SourceOrder: 3, peakdesk.SourceFAQ: 1}
		},
		"refused": func(r *drillResult) { r.Report.Accepted, r.Report.FirstInBudget, r.Report.FinalOnce = 3, 3, 3 },
	} {
		r := ok()
		spoil(r)
		if r.problem() == "" {
			t.Errorf("%s: not found", name)
		}
	}
}
