package outbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// The shop is down for a while: every action retries on the linear schedule
// (step·n, spread by at most ±10 % jitter) and succeeds once the shop is
// back, with exactly one effect each.
func TestShopOutageRetriesOnTheLinearScheduleThenSucceedsExactlyOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{Down: true})
	var actions []peakdesk.Action
	for i := range 10 {
		actions = append(actions, e.coupon(i), e.refund(i))
	}
	e.enqueue(t, actions...)
	reg := prometheus.NewRegistry()
	cfg := e.relayConfig(t)
	cfg.Registerer = reg
	r := e.startRelay(t, cfg)

	// Attempt n fails at the clock's now; the next is due step·n ± 10 %
	// later.
	for n := 1; n <= 3; n++ {
		failedAt := e.clock.Now()
		storagetest.WaitFor(t, "failed attempt", 10*time.Second, func() bool {
			return e.all(t, func(a peakdesk.Action) bool { return a.Attempts == n && a.State == peakdesk.ActionRetrying })
		})
		step := time.Duration(n) * 10 * time.Second
		low, high := step-step/10, step+step/10
		for _, a := range e.actions(t) {
			if wait := a.NextAttemptAt.Sub(failedAt); wait < low || wait > high {
				t.Fatalf("after attempt %d, action %d waits %v, want within [%v, %v]", n, a.ID, wait, low, high)
			}
			if a.LastHTTPStatus != 503 || a.LastError == "" {
				t.Fatalf("action after a 503: %+v", a)
			}
		}
		if n == 3 {
			e.sim.SetFaults(shopsim.Faults{}) // the shop is back
		}
		// Every next attempt is due once the clock passes the latest.
		e.clock.Advance(high)
	}
	storagetest.WaitFor(t, "every action succeeded", 10*time.Second, func() bool {
		return e.all(t, func(a peakdesk.Action) bool { return a.State == peakdesk.ActionSucceeded })
	})

	effects := e.effectsByKey()
	if len(effects) != len(actions) {
		t.Fatalf("%d distinct effects, want %d", len(effects), len(actions))
	}
	for _, a := range e.actions(t) {
		if effects[a.IdempotencyKey] != 1 {
			t.Errorf("action %s: %d effects, want 1", a.IdempotencyKey, effects[a.IdempotencyKey])
		}
		if a.Attempts != 4 || len(a.Result) == 0 || a.CompletedAt.IsZero() || a.LeaseOwner != "" {
			t.Errorf("succeeded action: %+v", a)
		}
		at := e.attempts(t, a.ID)
		if len(at) != 4 {
			t.Fatalf("action %d has %d attempt rows, want 4", a.ID, len(at))
		}
		for i, want := range []int{503, 503, 503, 201} {
			if at[i].HTTPStatus != want || at[i].Relay != r.ID() || at[i].EndedAt.IsZero() {
				t.Errorf("attempt %d: %+v, want status %d", i+1, at[i], want)
			}
		}
	}
	if got := outbox.AttemptsMetric(r, "coupon.issue", peakdesk.AttemptFailed); got != 30 {
		t.Errorf("failed coupon attempts metric = %v, want 30", got)
	}
	if got, err := outbox.ActionsGauge(context.Background(), r, "succeeded", "refund.request"); err != nil || got != 10 {
		t.Errorf("succeeded refunds gauge = %v, %v; want 10", got, err)
	}
}

// A relay dies mid-batch, leaving leased actions behind: nobody touches them
// until the leases expire, then another relay finishes them, one effect each.
func TestKilledRelaysLeasesExpireAndAnotherRelayFinishes(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{LatencyMS: 200, LatencyJitterMS: 400})
	const n = 40
	var actions []peakdesk.Action
	for i := range n {
		actions = append(actions, e.coupon(i))
	}
	e.enqueue(t, actions...)
	cfg := e.relayConfig(t)
	cfg.Concurrency = n
	first := e.startRelay(t, cfg)
	storagetest.WaitFor(t, "some effects applied", 10*time.Second, func() bool { return len(e.sim.Effects()) >= 3 })
	outbox.Kill(first)

	var stranded int
	for _, a := range e.actions(t) {
		if a.State == peakdesk.ActionRunning {
			stranded++
			if a.LeaseOwner != first.ID() {
				t.Fatalf("running action leased by %q", a.LeaseOwner)
			}
		}
	}
	if stranded == 0 {
		t.Fatal("the killed relay left no action behind; the test proves nothing")
	}
	if got, err := e.db.ClaimActions(context.Background(), "probe", e.clock.Now(), time.Minute, n); err != nil || len(got) != 0 {
		t.Fatalf("actions under a live lease were claimable: %d, %v", len(got), err)
	}

	e.clock.Advance(cfg.Lease + time.Second)
	second := e.startRelay(t, e.relayConfig(t))
	storagetest.WaitFor(t, "every action succeeded", 20*time.Second, func() bool {
		return e.all(t, func(a peakdesk.Action) bool { return a.State == peakdesk.ActionSucceeded })
	})
	effects := e.effectsByKey()
	if len(effects) != n {
		t.Fatalf("%d distinct effects, want %d", len(effects), n)
	}
	var reclaimed int
	for _, a := range e.actions(t) {
		if effects[a.IdempotencyKey] != 1 {
			t.Errorf("action %s: %d effects, want 1", a.IdempotencyKey, effects[a.IdempotencyKey])
		}
		at := e.attempts(t, a.ID)
		if a.Attempts == 2 {
			reclaimed++
			if at[0].Outcome != peakdesk.AttemptAbandoned || at[0].Relay != first.ID() ||
				at[1].Outcome != peakdesk.AttemptSucceeded || at[1].Relay != second.ID() {
				t.Errorf("re-claimed action %d attempts: %+v", a.ID, at)
			}
		}
	}
	if reclaimed != stranded {
		t.Errorf("%d actions were re-claimed, %d were stranded", reclaimed, stranded)
	}
}

// Two relays drain one table concurrently: both do work, every action is
// attempted once, so the shop never sees a key twice (no replays, no
// conflicts) and applies each action exactly once.
func TestTwoRelaysNeverClaimTheSameAction(t *testing.T) {
	t.Parallel()
	// 5 ms a call: one relay with 16 slots needs at least 125 ms for the
	// 400 actions, while the other looks for work every 10 ms.
	e := setup(t, shopsim.Faults{LatencyMS: 5, LatencyJitterMS: 2})
	const n = 400
	var actions []peakdesk.Action
	for i := range n {
		if i%2 == 0 {
			actions = append(actions, e.coupon(i))
		} else {
			actions = append(actions, e.refund(i))
		}
	}
	var relays []*outbox.Relay
	for range 2 {
		cfg := e.relayConfig(t)
		cfg.Concurrency = 16
		relays = append(relays, e.startRelay(t, cfg))
	}
	e.enqueue(t, actions...)
	storagetest.WaitFor(t, "every action succeeded", 30*time.Second, func() bool {
		return e.all(t, func(a peakdesk.Action) bool { return a.State == peakdesk.ActionSucceeded })
	})
	byRelay := map[string]int{}
	effects := e.effectsByKey()
	for _, a := range e.actions(t) {
		at := e.attempts(t, a.ID)
		if a.Attempts != 1 || len(at) != 1 {
			t.Fatalf("action %d attempted %d times (%d rows)", a.ID, a.Attempts, len(at))
		}
		if effects[a.IdempotencyKey] != 1 {
			t.Errorf("action %s applied %d times at the shop", a.IdempotencyKey, effects[a.IdempotencyKey])
		}
		byRelay[at[0].Relay]++
	}
	st := e.sim.Stats()
	if len(e.sim.Effects()) != n || st.Replays != 0 || st.Conflicts != 0 {
		t.Fatalf("effects %d (want %d), replays %d, conflicts %d", len(e.sim.Effects()), n, st.Replays, st.Conflicts)
	}
	for _, r := range relays {
		if byRelay[r.ID()] == 0 {
			t.Errorf("relay %s did nothing (actions by relay: %v); the test proves nothing", r.ID(), byRelay)
		}
	}
	if len(byRelay) != len(relays) || byRelay[relays[0].ID()]+byRelay[relays[1].ID()] != n {
		t.Errorf("actions by relay %v, want all %d by the two relays", byRelay, n)
	}
}

// A 4xx validation answer is final: the action is dead after one attempt.
// An operator retry after the fix uses a new key generation (the shop keeps
// its 422 under the old key, like Stripe) and succeeds, once.
func TestValidationFailureIsDeadUntilAnOperatorRetriesAfterTheFix(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{ValidationFail: true})
	e.enqueue(t, e.coupon(1))
	e.startRelay(t, e.relayConfig(t))
	ops, err := outbox.NewOps(outbox.OpsConfig{DB: e.db, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	op := outbox.Operator{ID: "alice", Shop: "demo"}
	dead := func(attempts int) peakdesk.Action {
		t.Helper()
		var a peakdesk.Action
		storagetest.WaitFor(t, "dead action", 10*time.Second, func() bool {
			a = e.actions(t)[0]
			return a.State == peakdesk.ActionDead && a.Attempts == attempts
		})
		if !a.Rejected || a.LastHTTPStatus != 422 || !strings.Contains(a.LastError, "validation_failed") {
			t.Fatalf("dead action: %+v", a)
		}
		return a
	}
	a := dead(1)

	// Retrying before the fix just fails again, under generation 1.
	if _, err := ops.Retry(context.Background(), op, a.ID); err != nil {
		t.Fatal(err)
	}
	dead(2)
	e.sim.SetFaults(shopsim.Faults{}) // the fix
	retried, err := ops.Retry(context.Background(), op, a.ID)
	if err != nil || retried.KeyGeneration != 2 || retried.State != peakdesk.ActionPending {
		t.Fatalf("retry: %+v, %v", retried, err)
	}
	storagetest.WaitFor(t, "success after the fix", 10*time.Second, func() bool {
		return e.actions(t)[0].State == peakdesk.ActionSucceeded
	})
	effects := e.sim.Effects()
	if len(effects) != 1 || effects[0].IdempotencyKey != a.IdempotencyKey+"-g2" {
		t.Fatalf("effects: %+v", effects)
	}
	at := e.attempts(t, a.ID)
	if len(at) != 3 || at[0].Key != a.IdempotencyKey || at[1].Key != a.IdempotencyKey+"-g1" ||
		at[0].Outcome != peakdesk.AttemptRejected || at[2].Outcome != peakdesk.AttemptSucceeded {
		t.Fatalf("attempts: %+v", at)
	}
	audit, err := e.db.AuditLog(context.Background(), "demo", 0, 10)
	if err != nil || len(audit) != 2 || audit[0].Actor != "alice" || audit[0].Action != "outbox.retry" {
		t.Fatalf("audit: %+v, %v", audit, err)
	}
}

// An action that ran out of attempts on transient failures may have been
// applied under its key, so an operator retry keeps the key.
func TestExhaustedActionIsDeadAndAnOperatorRetryKeepsItsKey(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{Down: true})
	a := e.refund(1)
	a.MaxAttempts = 2
	e.enqueue(t, a)
	e.startRelay(t, e.relayConfig(t))
	storagetest.WaitFor(t, "first failure", 10*time.Second, func() bool {
		a := e.actions(t)[0]
		return a.Attempts == 1 && a.State == peakdesk.ActionRetrying
	})
	e.clock.Advance(11 * time.Second)
	var got peakdesk.Action
	storagetest.WaitFor(t, "dead after max attempts", 10*time.Second, func() bool {
		got = e.actions(t)[0]
		return got.State == peakdesk.ActionDead
	})
	if got.Attempts != 2 || got.Rejected || !strings.HasPrefix(got.LastError, "gave up after 2 attempts") {
		t.Fatalf("dead action: %+v", got)
	}
	e.sim.SetFaults(shopsim.Faults{})
	ops, _ := outbox.NewOps(outbox.OpsConfig{DB: e.db, Now: e.clock.Now})
	retried, err := ops.Retry(context.Background(), outbox.Operator{ID: "bob", Shop: "*"}, got.ID)
	if err != nil || retried.KeyGeneration != 0 || retried.RunAttempts != 0 {
		t.Fatalf("retry: %+v, %v", retried, err)
	}
	storagetest.WaitFor(t, "success", 10*time.Second, func() bool { return e.actions(t)[0].State == peakdesk.ActionSucceeded })
	if ef := e.sim.Effects(); len(ef) != 1 || ef[0].IdempotencyKey != a.IdempotencyKey {
		t.Fatalf("effects: %+v", ef)
	}
}

// Stop lets attempts finish for SoftStop, then cuts them short and records
// them as aborted, due again at once and not counted against the budget.
func TestStopRecordsAbortedAttempts(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{LatencyMS: 5000})
	e.enqueue(t, e.coupon(1))
	cfg := e.relayConfig(t)
	cfg.SoftStop = 50 * time.Millisecond
	r := e.startRelay(t, cfg)
	storagetest.WaitFor(t, "claimed", 10*time.Second, func() bool { return e.actions(t)[0].State == peakdesk.ActionRunning })
	r.Stop()
	r.Stop()
	a := e.actions(t)[0]
	if a.State != peakdesk.ActionRetrying || a.Attempts != 1 || a.RunAttempts != 0 || !a.NextAttemptAt.Equal(e.clock.Now()) {
		t.Fatalf("after stop: %+v", a)
	}
	if at := e.attempts(t, a.ID); len(at) != 1 || at[0].Outcome != peakdesk.AttemptAborted {
		t.Fatalf("attempts: %+v", at)
	}
}

// A webhook is signed with the shop's secret (Peakdesk-Signature, verified
// by the simulated shop); a bad secret is a final 401 until the shop's
// settings are fixed and an operator retries.
func TestReplyWebhookIsSignedAndRetriedAfterTheSecretIsFixed(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	settings := storage.ShopAPISettings{ShopID: "demo", WebhookURL: e.url + "/webhooks/replies", WebhookSecret: "wrong"}
	if err := e.db.PutShopAPISettings(ctx, settings); err != nil {
		t.Fatal(err)
	}
	reply := &peakdesk.Reply{ID: "r1", ShopID: "demo", ConversationID: strings.Repeat("c", 32),
		MessageIDs: []string{strings.Repeat("a", 32)}, Text: "您好，订单已发货", Source: peakdesk.SourceLLM,
		CreatedAt: time.Now().UTC()}
	a, err := outbox.ReplyWebhook(reply)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := outbox.ReplyWebhook(reply); again.IdempotencyKey != a.IdempotencyKey {
		t.Fatal("the webhook of one reply must have one key")
	}
	a.NextAttemptAt = e.clock.Now()
	if n, err := e.db.EnqueueActions(ctx, []peakdesk.Action{a}); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	e.startRelay(t, e.relayConfig(t))
	var dead peakdesk.Action
	storagetest.WaitFor(t, "dead on 401", 10*time.Second, func() bool {
		dead = e.actions(t)[0]
		return dead.State == peakdesk.ActionDead
	})
	if dead.LastHTTPStatus != 401 {
		t.Fatalf("dead webhook: %+v", dead)
	}
	settings.WebhookSecret = testWebhookSecret
	if err := e.db.PutShopAPISettings(ctx, settings); err != nil {
		t.Fatal(err)
	}
	ops, _ := outbox.NewOps(outbox.OpsConfig{DB: e.db, Now: e.clock.Now})
	if _, err := ops.Retry(ctx, outbox.Operator{ID: "alice", Shop: "demo"}, dead.ID); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "delivered", 10*time.Second, func() bool { return e.actions(t)[0].State == peakdesk.ActionSucceeded })
	var good []shopsim.Webhook
	for _, wh := range e.sim.Webhooks() {
		if wh.SignatureValid {
			good = append(good, wh)
		}
	}
	if len(good) != 1 || good[0].EventID != a.IdempotencyKey || good[0].Duplicate || good[0].Shop != "demo" ||
		good[0].Refused != "" || !strings.Contains(string(good[0].Body), "订单已发货") {
		t.Fatalf("valid deliveries: %+v", good)
	}
	// Signed the way a shop verifies: Peakdesk-Signature t=…,v1=… over
	// "t.body", dated when sent.
	signedAt, err := shopapi.VerifyWebhook([]byte(testWebhookSecret), good[0].Signature, good[0].Body, good[0].At, 0)
	if err != nil || !strings.HasPrefix(good[0].Signature, "t=") || good[0].At.Sub(signedAt) > 2*time.Second {
		t.Fatalf("signature %q of a delivery at %v: signed at %v, %v", good[0].Signature, good[0].At, signedAt, err)
	}
}

// A slow order lookup becomes an order.followup: it retries until the shop
// answers and pushes the second reply once; a follow-up that runs out of
// attempts hands the conversation to a human. Both speak the customer's
// language: the first customer asked in Chinese, the second in English.
func TestOrderFollowUpPushesTheSecondReplyOrHandsOver(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{Down: true})
	ok := e.action(peakdesk.ActionOrderFollowUp, "ord_ok", outbox.FollowUpPayload{OrderID: "1234567", UserID: "u7", MessageID: "m1",
		Lang: texts.ZH})
	ok.MaxAttempts = 5
	lost := e.action(peakdesk.ActionOrderFollowUp, "ord_lost", outbox.FollowUpPayload{OrderID: "7654321", UserID: "u1", Lang: texts.EN})
	lost.MaxAttempts = 2
	e.enqueue(t, ok, lost)

	var mu sync.Mutex
	var followUps []outbox.FollowUpResult
	var handoffs []string
	var calls atomic.Int32
	cfg := e.relayConfig(t)
	cfg.OnFollowUp = func(_ context.Context, a peakdesk.Action, r outbox.FollowUpResult) error {
		mu.Lock()
		defer mu.Unlock()
		if calls.Add(1) == 1 {
			return context.DeadlineExceeded // the first push fails: the follow-up retries it
		}
		followUps = append(followUps, r)
		return nil
	}
	var notices []string
	cfg.OnHandoff = func(_ context.Context, a peakdesk.Action, text, reason string) error {
		mu.Lock()
		defer mu.Unlock()
		handoffs = append(handoffs, a.IdempotencyKey+": "+reason)
		notices = append(notices, text)
		return nil
	}
	e.startRelay(t, cfg)
	storagetest.WaitFor(t, "first failures", 10*time.Second, func() bool {
		return e.all(t, func(a peakdesk.Action) bool { return a.Attempts == 1 && a.State == peakdesk.ActionRetrying })
	})
	e.clock.Advance(6 * time.Second)
	storagetest.WaitFor(t, "lost follow-up handed over", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handoffs) == 1
	})
	if !strings.HasPrefix(handoffs[0], "ord_lost: gave up after 2 attempts") {
		t.Fatalf("handoff: %q", handoffs[0])
	}
	// ok failed its second attempt (next in 9..11 s); now the shop is back
	// but the first push of the reply fails (next in 13.5..16.5 s).
	storagetest.WaitFor(t, "second failure", 10*time.Second, func() bool {
		a := e.find(t, "ord_ok")
		return a.Attempts == 2 && a.State == peakdesk.ActionRetrying
	})
	e.sim.SetFaults(shopsim.Faults{})
	e.clock.Advance(11 * time.Second)
	storagetest.WaitFor(t, "failed push recorded", 10*time.Second, func() bool {
		a := e.find(t, "ord_ok")
		return a.Attempts == 3 && a.State == peakdesk.ActionRetrying
	})
	if calls.Load() != 1 {
		t.Fatalf("%d pushes, want 1", calls.Load())
	}
	e.clock.Advance(17 * time.Second)
	storagetest.WaitFor(t, "follow-up succeeded", 10*time.Second, func() bool {
		return e.find(t, "ord_ok").State == peakdesk.ActionSucceeded
	})
	mu.Lock()
	defer mu.Unlock()
	if len(followUps) != 1 || followUps[0].Order.ID != "1234567" ||
		!strings.Contains(followUps[0].Text, "您的订单 1234567 查到了") || len(handoffs) != 1 {
		t.Fatalf("follow-ups %+v, handoffs %v", followUps, handoffs)
	}
	if strings.Contains(followUps[0].Text, "Update on your order") {
		t.Fatalf("a Chinese customer's follow-up is in English: %q", followUps[0].Text)
	}
	if len(notices) != 1 || !strings.HasPrefix(notices[0], "Sorry, we could not look up your order") {
		t.Fatalf("handoff notices %q; want the English one", notices)
	}
}

// Every attempt at the shop continues the trace of the message that
// promised the action, as a span of its own; an action without a trace
// starts a new one per attempt. The relay's logs carry the attempt's trace
// id.
func TestShopCallsContinueTheTraceOfTheMessageThatPromisedThem(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{Down: true})
	msg := peakdesk.ContinueTrace("")
	traced := e.coupon(1)
	traced.Trace = msg.Parent
	untraced := e.refund(1)
	untraced.MaxAttempts = 2
	e.enqueue(t, traced, untraced)
	logs := &logBuffer{}
	cfg := e.relayConfig(t)
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e.startRelay(t, cfg)

	storagetest.WaitFor(t, "first failures", 10*time.Second, func() bool {
		return e.all(t, func(a peakdesk.Action) bool { return a.Attempts == 1 && a.State == peakdesk.ActionRetrying })
	})
	e.clock.Advance(11 * time.Second)
	storagetest.WaitFor(t, "the refund dead, the coupon failed twice", 10*time.Second, func() bool {
		return e.find(t, untraced.IdempotencyKey).State == peakdesk.ActionDead &&
			e.find(t, traced.IdempotencyKey).Attempts == 2
	})
	e.sim.SetFaults(shopsim.Faults{})
	e.clock.Advance(22 * time.Second)
	storagetest.WaitFor(t, "the coupon succeeded", 10*time.Second, func() bool {
		return e.find(t, traced.IdempotencyKey).State == peakdesk.ActionSucceeded
	})

	spans := map[string]bool{}
	var refundTraces []string
	for _, c := range e.shopCalls() {
		parts := strings.Split(c.Trace, "-")
		if len(parts) != 4 {
			t.Fatalf("%s %s: traceparent %q", c.Method, c.Path, c.Trace)
		}
		switch c.Key {
		case traced.IdempotencyKey:
			if parts[1] != msg.ID || c.Trace == msg.Parent || spans[parts[2]] {
				t.Errorf("coupon attempt with traceparent %q; want trace %s with a span of its own", c.Trace, msg.ID)
			}
			spans[parts[2]] = true
		case untraced.IdempotencyKey:
			refundTraces = append(refundTraces, parts[1])
		}
	}
	if len(spans) != 3 {
		t.Errorf("%d coupon attempts reached the shop, want 3", len(spans))
	}
	if len(refundTraces) != 2 || refundTraces[0] == refundTraces[1] || refundTraces[0] == msg.ID {
		t.Fatalf("the untraced refund's attempts were traced %v; want a new trace each", refundTraces)
	}
	var dead map[string]any
	for _, rec := range logs.records(t) {
		if rec["msg"] == "outbox action is dead" {
			dead = rec
		}
	}
	if dead == nil || dead["trace_id"] != refundTraces[1] || dead["action_id"] == nil {
		t.Errorf("the dead refund was logged as %v; want trace_id %s", dead, refundTraces[1])
	}
}

// logBuffer collects a JSON logger's lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(b.buf.Bytes()), []byte("\n")) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func TestRelayConfigValidation(t *testing.T) {
	t.Parallel()
	e := &testEnv{db: &storage.DB{}, shop: &shopapi.Client{}}
	base := func() outbox.Config {
		c := outbox.Config{DB: e.db, Shop: e.shop,
			OnFollowUp: func(context.Context, peakdesk.Action, outbox.FollowUpResult) error { return nil },
			OnHandoff:  func(context.Context, peakdesk.Action, string, string) error { return nil }}
		return c
	}
	tests := []struct {
		name string
		mod  func(*outbox.Config)
		want string
	}{
		{"no DB", func(c *outbox.Config) { c.DB = nil }, "DB"},
		{"no shop", func(c *outbox.Config) { c.Shop = nil }, "Shop"},
		{"no follow-up hook", func(c *outbox.Config) { c.OnFollowUp = nil }, "OnFollowUp"},
		{"no handoff hook", func(c *outbox.Config) { c.OnHandoff = nil }, "OnHandoff"},
		{"short lease", func(c *outbox.Config) { c.Lease, c.AttemptTimeout = time.Minute, 40*time.Second }, "Lease"},
		{"jitter", func(c *outbox.Config) { c.Jitter = 2 }, "Jitter"},
	}
	for _, tc := range tests {
		c := base()
		tc.mod(&c)
		if _, err := outbox.NewRelay(c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := outbox.NewRelay(base()); err != nil {
		t.Fatal(err)
	}
}

// With polling out of the picture, LISTEN/NOTIFY alone wakes the relay for
// new actions and for operator retries.
func TestRelayWakesOnNotify(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{ValidationFail: true})
	cfg := e.relayConfig(t)
	cfg.PollInterval = time.Hour
	e.startRelay(t, cfg)
	e.enqueue(t, e.coupon(1))
	storagetest.WaitFor(t, "the new action attempted", 10*time.Second, func() bool {
		return e.actions(t)[0].State == peakdesk.ActionDead
	})
	e.sim.SetFaults(shopsim.Faults{})
	ops, _ := outbox.NewOps(outbox.OpsConfig{DB: e.db, Now: e.clock.Now})
	if _, err := ops.Retry(context.Background(), outbox.Operator{ID: "alice", Shop: "*"}, e.actions(t)[0].ID); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the retried action succeeded", 10*time.Second, func() bool {
		return e.actions(t)[0].State == peakdesk.ActionSucceeded
	})
}

// An order follow-up's reply is masked like every reply before it is
// stored: personal data in the shop's logistics texts is masked, while the
// order and tracking numbers the customer needs stay readable even where
// they look like a card or an old ID-card number.
func TestOrderFollowUpReplyIsMaskedBeforeItIsStored(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	const (
		orderID  = "4111111111111111"  // passes the Luhn check, like a card
		tracking = "SF440304960229123" // 15 digits that read like an old ID card
	)
	e.sim.AddOrder(shopsim.Order{ID: orderID, Shop: "demo", UserID: "u9", Status: "shipped", AmountCents: 1999,
		Logistics: shopsim.Logistics{Carrier: "SF Express", TrackingNo: tracking, Status: "in_transit",
			Events: []shopsim.LogisticsEvent{{At: time.Now(), Status: "out_for_delivery", Location: "Shanghai",
				Description: "Courier Wang (139\u200b1234\u200b5678) is on the way to recipient ID 110105491231002"}}}})
	conv := strings.Repeat("c", 32)
	m := &peakdesk.Message{ID: strings.Repeat("a", 32), ShopID: "demo", ConversationID: conv, UserID: "u9",
		Text: "where is my order " + orderID, Priority: peakdesk.P2, AcceptedAt: time.Now().UTC()}
	if _, existed, err := e.db.SaveAnsweredMessage(ctx, m, &peakdesk.Reply{ID: "first", ShopID: "demo",
		ConversationID: conv, MessageIDs: []string{m.ID}, Text: "Checking…", Source: peakdesk.SourceLLM}, nil); err != nil || existed {
		t.Fatalf("store the first answer: existed=%v err=%v", existed, err)
	}
	e.enqueue(t, e.action(peakdesk.ActionOrderFollowUp, "ord_masked",
		outbox.FollowUpPayload{OrderID: orderID, UserID: "u9", MessageID: m.ID}))

	cfg := e.relayConfig(t)
	cfg.OnFollowUp = func(ctx context.Context, a peakdesk.Action, r outbox.FollowUpResult) error {
		// What cmd/peakdesk's pusher stores.
		_, err := e.db.SaveFollowUp(ctx, &peakdesk.Reply{ID: "followup", ShopID: a.ShopID, ConversationID: a.ConversationID,
			Text: r.Text, Source: peakdesk.SourceFollowUp}, nil, false)
		return err
	}
	e.startRelay(t, cfg)
	storagetest.WaitFor(t, "follow-up succeeded", 10*time.Second, func() bool {
		return e.find(t, "ord_masked").State == peakdesk.ActionSucceeded
	})
	c, err := e.db.Conversation(ctx, "demo", conv)
	if err != nil {
		t.Fatal(err)
	}
	var text string
	for _, r := range c.Replies {
		if r.Source == peakdesk.SourceFollowUp {
			text = r.Text
		}
	}
	for _, want := range []string{"您的订单 " + orderID, tracking, "139****5678", "***********1002"} {
		if !strings.Contains(text, want) {
			t.Errorf("stored follow-up %q lacks %q", text, want)
		}
	}
	for _, leak := range []string{"1234", "110105491231002"} {
		if strings.Contains(text, leak) {
			t.Errorf("stored follow-up %q holds %q", text, leak)
		}
	}
}
