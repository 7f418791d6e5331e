package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/loadtest"
)

// The multi-process fault drill, short (about 90 s): 2 ingest, 3 worker
// and 2 relay processes (this test binary in child mode) on a Postgres and
// a Redis of the drill's own, under steady load and refund requests, while
// a worker and a relay are SIGKILLed, Postgres restarts, Redis, the LLM
// and the shop API are down for a few seconds each. Nothing may be lost or
// duplicated: no message, no reply, no refund at the shop. `make
// drill-faults` runs the long version with minute-long outages.
func TestFaultDrill(t *testing.T) {
	var logs syncBuffer
	cfg := shortFaultsConfig(&logs)
	cfg.Command = func(roles string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+roles)
		return cmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := drillFaults(ctx, cfg)
	if err != nil {
		t.Fatalf("drill: %v\n%s", err, logs.tail())
	}
	var out bytes.Buffer
	res.print(&out)
	t.Logf("figures (short version, shared machine):\n%s", out.String())
	if problem := res.problem(); problem != "" {
		t.Errorf("%s\n%s", problem, logs.tail())
	}
	if len(res.Faults) != 6 {
		t.Errorf("%d faults injected, want 6: %+v", len(res.Faults), res.Faults)
	}
	// The drill must have exercised the outbox, or its "0 duplicated
	// effects" says nothing.
	if res.Refunds.Succeeded == 0 {
		t.Errorf("no refund reached the shop: %+v", res.Refunds)
	}
	if res.P0KillCount == 0 || res.P0Burst.Answered == 0 {
		t.Errorf("no p0 answer after the worker SIGKILL: %+v", res.P0Burst)
	}
}

// syncBuffer is a log buffer the drill's goroutines write to at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// tail is the last lines of the log, for a failure message.
func (s *syncBuffer) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := strings.Split(s.b.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-60):], "\n")
}

// The fault drill fails on whatever was lost or duplicated: a message, a
// reply, a refund request or a refund at the shop.
func TestFaultDrillProblems(t *testing.T) {
	ok := func() *faultsResult {
		return &faultsResult{Load: &loadtest.LoadReport{Offered: 10, Accepted: 10, Answered: 10},
			Refunds: refundCheck{Asked: 3, Accepted: 3, Answered: 3, Granted: 2, Actions: 2, Succeeded: 2, Effects: 2}}
	}
	if p := ok().problem(); p != "" {
		t.Fatalf("a clean drill has a problem: %s", p)
	}
	for name, spoil := range map[string]func(r *faultsResult){
		"nothing accepted":  func(r *faultsResult) { r.Load.Accepted, r.Load.Answered = 0, 0 },
		"lost":              func(r *faultsResult) { r.Load.Answered, r.Load.Lost = 9, 1 },
		"reply twice":       func(r *faultsResult) { r.Load.Duplicates = 1 },
		"shed unstored":     func(r *faultsResult) { r.Load.ShedUnstored = 1 },
		"refund unanswered": func(r *faultsResult) { r.Refunds.Answered, r.Refunds.Unanswered = 2, []string{"u5:m"} },
		"action stuck":      func(r *faultsResult) { r.Refunds.Succeeded, r.Refunds.Unfinished = 1, []string{"7:retrying"} },
		"refund twice":      func(r *faultsResult) { r.Refunds.Effects, r.Refunds.DuplicateEffects = 3, 1 },
		"refund orphan":     func(r *faultsResult) { r.Refunds.Effects, r.Refunds.Orphans = 3, 1 },
		"refund missing":    func(r *faultsResult) { r.Refunds.Effects = 1 },
		"p0 burst lost":     func(r *faultsResult) { r.P0Burst = p0BurstResult{Sent: 4, Accepted: 4, Answered: 3} },
	} {
		r := ok()
		spoil(r)
		if r.problem() == "" {
			t.Errorf("%s: no problem found", name)
		}
	}
}
