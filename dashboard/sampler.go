package dashboard

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/snapshot"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// Sample is the state of the desk at one instant, as the console sees it
// from Postgres, JetStream and the processes' metric snapshots. Rates are
// per second over the processes' windows (about 20 s).
type Sample struct {
	At time.Time `json:"at"`
	// Live is set when some process published a snapshot.
	Live bool `json:"live"`
	// Backlog is per priority (JetStream num_pending + num_ack_pending).
	Backlog         map[string]float64 `json:"backlog"`
	Workers         int                `json:"workers"`
	InFlight        float64            `json:"in_flight"`
	Limit           float64            `json:"limit"`
	AnswersPerSec   float64            `json:"answers_per_s"`
	AcceptedPerSec  float64            `json:"accepted_per_s"`
	Sources         map[string]float64 `json:"sources"`
	P50             map[string]float64 `json:"p50"`
	P99             map[string]float64 `json:"p99"`
	LLMCallsPerSec  float64            `json:"llm_calls_per_s"`
	LLM429PerSec    float64            `json:"llm_429_per_s"`
	Edge429PerSec   float64            `json:"edge_429_per_s"`
	FallbacksPerSec float64            `json:"fallbacks_per_s"`
	Fallbacks       map[string]float64 `json:"fallbacks"`
	Breakers        []Breaker          `json:"breakers"`
	// Outbox counts actions by state; OldestDueSeconds is how long the
	// longest-waiting due action has waited.
	Outbox           map[string]int64 `json:"outbox"`
	OldestDueSeconds float64          `json:"oldest_due_s"`
	FollowUps        int64            `json:"follow_ups"`
	// Order answers (issue 15): OrderFinalP99 is the p99 time from an
	// order question to its final answer (directly, by a follow-up or a
	// human) in seconds; OrderLookupsPerSec are the lookups that asked a
	// shop, OrderCoalescedPerSec those answered by another customer's
	// lookup (joined, cached or followed across processes).
	OrderFinalP99        float64 `json:"order_final_p99"`
	OrderLookupsPerSec   float64 `json:"order_lookups_per_s"`
	OrderCoalescedPerSec float64 `json:"order_coalesced_per_s"`
	DLQ                  int64   `json:"dlq"`
	// Spend is today's LLM spend per shop in micro-USD.
	Spend map[string]int64 `json:"spend"`
}

// Breaker is one LLM circuit breaker, at its worst state among processes.
type Breaker struct {
	Provider string `json:"provider"`
	Model    string `json:"model"`
	State    string `json:"state"`
}

// sampler takes a Sample every SampleInterval, keeps the latest for the
// live view and stores one row per interval for the charts.
type sampler struct {
	cfg *Config
	log *slog.Logger

	mu       sync.Mutex
	latest   *Sample
	slowAt   time.Time // when the Postgres aggregates were last read
	prunedAt time.Time
}

func newSampler(cfg *Config, log *slog.Logger) *sampler {
	return &sampler{cfg: cfg, log: log}
}

func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.cfg.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sampleOnce(ctx)
		}
	}
}

// last returns the latest sample (never nil).
func (s *sampler) last() *Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest == nil {
		return &Sample{}
	}
	return s.latest
}

// sampleOnce takes, keeps and stores one sample. Each source that fails
// is logged and left out, so one broken service does not blank the page.
func (s *sampler) sampleOnce(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, max(s.cfg.SampleInterval, 2*time.Second))
	defer cancel()
	now := s.cfg.Now()
	prev := s.last()
	smp := &Sample{At: now, Backlog: map[string]float64{}, Outbox: prev.Outbox, OldestDueSeconds: prev.OldestDueSeconds,
		FollowUps: prev.FollowUps, Spend: prev.Spend}

	for _, p := range peakdesk.Priorities {
		smp.Backlog[string(p)] = math.NaN()
		cons, err := s.cfg.JS.Consumer(ctx, queue.StreamIn, queue.ConsumerName(p))
		if err != nil {
			s.log.DebugContext(ctx, "sample backlog", "priority", p, "err", err)
			continue
		}
		info, err := cons.Info(ctx)
		if err != nil {
			continue
		}
		smp.Backlog[string(p)] = float64(info.NumPending) + float64(info.NumAckPending)
	}

	snaps, err := snapshot.Read(ctx, s.cfg.Redis, s.cfg.SnapshotPrefix, now, 10*time.Second)
	if err != nil {
		s.log.WarnContext(ctx, "sample snapshots", "err", err)
	}
	fromSnapshots(smp, snapshot.View(snaps))

	if n, err := s.cfg.DB.DeadLetterCount(ctx); err == nil {
		smp.DLQ = n
	} else {
		s.log.WarnContext(ctx, "sample dlq", "err", err)
	}
	// The aggregates over big tables are read every third sample.
	if now.Sub(s.slowAt) >= 3*s.cfg.SampleInterval-s.cfg.SampleInterval/2 {
		s.slowAt = now
		s.sampleSlow(ctx, smp, now)
	}

	s.mu.Lock()
	s.latest = smp
	s.mu.Unlock()
	s.store(ctx, smp)
	if now.Sub(s.prunedAt) > 10*time.Minute {
		s.prunedAt = now
		if _, err := s.cfg.DB.PruneSamples(ctx, now.Add(-s.cfg.SampleRetention)); err != nil {
			s.log.WarnContext(ctx, "prune samples", "err", err)
		}
		if _, err := s.cfg.DB.DeleteExpiredSessions(ctx); err != nil {
			s.log.WarnContext(ctx, "delete expired sessions", "err", err)
		}
	}
}

func (s *sampler) sampleSlow(ctx context.Context, smp *Sample, now time.Time) {
	if counts, err := s.cfg.DB.ActionCounts(ctx, storage.SucceededCountEvery); err == nil {
		smp.Outbox, smp.FollowUps = map[string]int64{}, 0
		for _, c := range counts {
			smp.Outbox[string(c.State)] += c.Count
			if c.Kind == peakdesk.ActionOrderFollowUp && !c.State.Final() {
				smp.FollowUps += c.Count
			}
		}
	} else {
		s.log.WarnContext(ctx, "sample outbox", "err", err)
	}
	if due, ok, err := s.cfg.DB.OldestDue(ctx, now); err == nil {
		smp.OldestDueSeconds = 0
		if ok {
			smp.OldestDueSeconds = now.Sub(due).Seconds()
		}
	}
	y, m, d := now.In(storage.ShopDay).Date()
	if spend, err := s.cfg.DB.SpendSince(ctx, time.Date(y, m, d, 0, 0, 0, 0, storage.ShopDay)); err == nil {
		smp.Spend = spend
	} else {
		s.log.WarnContext(ctx, "sample spend", "err", err)
	}
}

// fromSnapshots adds up what the processes published.
func fromSnapshots(smp *Sample, v snapshot.View) {
	smp.Live = len(v) > 0
	smp.Workers = v.Processes("peakdesk_worker_inflight")
	smp.InFlight = snapshot.Total(v.Sum("peakdesk_worker_inflight", ""))
	smp.Limit = snapshot.Total(v.Sum("peakdesk_worker_concurrency_limit", ""))
	smp.Sources = v.Rate("peakdesk_answers_total", "source")
	smp.AnswersPerSec = snapshot.Total(smp.Sources)
	smp.AcceptedPerSec = snapshot.Total(v.Rate("peakdesk_ingest_accepted_total", ""))
	smp.P50 = v.Quantile("peakdesk_answer_latency_seconds", "priority", 0.5)
	smp.P99 = v.Quantile("peakdesk_answer_latency_seconds", "priority", 0.99)
	smp.LLMCallsPerSec = snapshot.Total(v.Rate("peakdesk_llm_calls_total", "", "outcome=!"+llm.OutcomeBreakerOpen))
	smp.LLM429PerSec = snapshot.Total(v.Rate("peakdesk_llm_calls_total", "", "outcome="+llm.OutcomeRateLimited))
	smp.Edge429PerSec = snapshot.Total(v.Rate("peakdesk_ingest_requests_total", "", "code="+peakdesk.ERateLimited))
	smp.Fallbacks = v.Rate("peakdesk_llm_fallbacks_total", "source")
	smp.FallbacksPerSec = snapshot.Total(smp.Fallbacks)
	smp.OrderFinalP99 = v.Quantile("peakdesk_order_final_answer_seconds", "", 0.99)[""]
	lookups := v.Rate("peakdesk_order_lookups_total", "outcome")
	smp.OrderLookupsPerSec = lookups["ran"]
	smp.OrderCoalescedPerSec = lookups["joined"] + lookups["cached"] + lookups["followed"]
	byModel := map[string]float64{}
	// Breakers are keyed by provider and model: take each pair's worst.
	for _, snap := range v {
		for _, se := range snap.Series {
			if se.Name != "peakdesk_llm_breaker_state" {
				continue
			}
			key := se.Label("provider") + "\x00" + se.Label("model")
			if cur, ok := byModel[key]; !ok || se.Value > cur {
				byModel[key] = se.Value
			}
		}
	}
	smp.Breakers = nil
	for key, st := range byModel {
		provider, model, _ := strings.Cut(key, "\x00")
		smp.Breakers = append(smp.Breakers, Breaker{Provider: provider, Model: model, State: breakerState(st)})
	}
	sort.Slice(smp.Breakers, func(i, j int) bool {
		a, b := smp.Breakers[i], smp.Breakers[j]
		return a.Model < b.Model || (a.Model == b.Model && a.Provider < b.Provider)
	})
}

// breakerState names gobreaker's states as the metric encodes them.
func breakerState(v float64) string {
	switch {
	case v >= 2:
		return "open"
	case v >= 1:
		return "half-open"
	}
	return "closed"
}

func (s *sampler) store(ctx context.Context, smp *Sample) {
	data, err := json.Marshal(jsonSafe(smp))
	if err != nil {
		s.log.WarnContext(ctx, "encode sample", "err", err)
		return
	}
	z := func(x float64) float64 {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return 0
		}
		return x
	}
	row := storage.SampleRow{
		At:        smp.At.Truncate(s.cfg.SampleInterval),
		BacklogP0: z(smp.Backlog["p0"]), BacklogP1: z(smp.Backlog["p1"]), BacklogP2: z(smp.Backlog["p2"]),
		InFlight: smp.InFlight, Concurrency: smp.Limit, AnswersPerS: smp.AnswersPerSec,
		P99P0: z(smp.P99["p0"]), P99P1: z(smp.P99["p1"]), P99P2: z(smp.P99["p2"]),
		LLM429PerS: smp.LLM429PerSec, FallbacksPerS: smp.FallbacksPerSec,
		OutboxDue: float64(smp.Outbox["pending"] + smp.Outbox["retrying"]), OutboxDead: float64(smp.Outbox["dead"]),
		DLQ: float64(smp.DLQ), Data: data,
	}
	if err := s.cfg.DB.InsertSample(ctx, row); err != nil {
		s.log.WarnContext(ctx, "store sample", "err", err)
	}
}

// jsonSafe returns a copy of smp without NaNs, which JSON cannot carry.
func jsonSafe(smp *Sample) *Sample {
	c := *smp
	c.Backlog = map[string]float64{}
	for k, v := range smp.Backlog {
		if !math.IsNaN(v) {
			c.Backlog[k] = v
		}
	}
	return &c
}
