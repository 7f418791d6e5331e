// Package snapshot lets the operator console see numbers that live only in
// other processes' memory (in-flight messages, the adaptive concurrency
// limit, LLM 429s and fallbacks, breaker states, answer latency) when every
// role runs in a process of its own. Each process runs a Reporter that
// gathers a chosen set of metric families from its Prometheus registry every
// couple of seconds and publishes them to Redis under a short TTL: gauges as
// they are, counters with their rate over a sliding window, histograms as
// the bucket counts added within the window. The console reads every live
// process's snapshot (Read) and adds them up; a process that stops simply
// ages out.
package snapshot

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
)

// DefaultNames are the metric families a Reporter publishes by default:
// what the console's overview shows.
var DefaultNames = []string{
	"peakdesk_worker_inflight",
	"peakdesk_worker_concurrency_limit",
	"peakdesk_answers_total",
	"peakdesk_answer_latency_seconds",
	"peakdesk_llm_calls_total",
	"peakdesk_llm_fallbacks_total",
	"peakdesk_llm_breaker_state",
	"peakdesk_ingest_requests_total",
	"peakdesk_ingest_accepted_total",
	"peakdesk_outbox_relay_inflight",
	"peakdesk_order_final_answer_seconds",
	"peakdesk_order_lookups_total",
}

// DefaultPrefix starts the Redis keys: prefix+"p:"+process holds one
// process's snapshot, prefix+"processes" a sorted set of the processes by
// the time they last reported. Processes that should see each other share
// a prefix (tests use their own).
const DefaultPrefix = "pd:snap:"

// Series is one labelled series of a metric family.
type Series struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	// Value is a gauge's value or a counter's total.
	Value float64 `json:"value"`
	// Rate is a counter's increase per second over the window.
	Rate float64 `json:"rate,omitempty"`
	// Bounds and Counts are a histogram's bucket upper bounds and the
	// observations (cumulative, like Prometheus buckets) added within the
	// window; +Inf is left out, Count covers it.
	Bounds []float64 `json:"bounds,omitempty"`
	Counts []float64 `json:"counts,omitempty"`
	Count  float64   `json:"count,omitempty"`
}

// Label returns the value of label name.
func (s *Series) Label(name string) string { return s.Labels[name] }

// Snapshot is what one process last published.
type Snapshot struct {
	Process string    `json:"process"`
	At      time.Time `json:"at"`
	// Window is how many seconds the rates and histogram counts cover.
	Window float64  `json:"window"`
	Series []Series `json:"series"`
}

// Config configures a Reporter. Gatherer and Redis are required.
type Config struct {
	Gatherer prometheus.Gatherer
	Redis    *redis.Client
	// Names are the metric families to publish; default DefaultNames.
	Names []string
	// Prefix starts the Redis keys; default DefaultPrefix.
	Prefix string
	// Process names this process; default host-pid-random.
	Process string
	// Interval between two reports; default 2 s.
	Interval time.Duration
	// Window is what rates and histogram counts are computed over; default
	// 20 s.
	Window time.Duration
	// TTL is how long a report stays readable; default 5 × Interval.
	TTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if len(c.Names) == 0 {
		c.Names = DefaultNames
	}
	c.Prefix = cmp.Or(c.Prefix, DefaultPrefix)
	if c.Process == "" {
		host, _ := os.Hostname()
		var b [3]byte
		_, _ = rand.Read(b[:])
		c.Process = cmp.Or(host, "peakdesk") + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
	}
	c.Interval = cmp.Or(c.Interval, 2*time.Second)
	c.Window = cmp.Or(c.Window, 20*time.Second)
	c.TTL = cmp.Or(c.TTL, 5*c.Interval)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	switch {
	case c.Gatherer == nil:
		return errors.New("snapshot: config: Gatherer is required")
	case c.Redis == nil:
		return errors.New("snapshot: config: Redis is required")
	case c.Window < c.Interval:
		return errors.New("snapshot: config: Window must be at least Interval")
	}
	return nil
}

// Reporter publishes this process's snapshot to Redis every Interval.
type Reporter struct {
	cfg Config
	log *slog.Logger

	history []reading // oldest first, within Window

	stop     context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

// reading is one gather: counter totals and histogram buckets by series key.
type reading struct {
	at     time.Time
	totals map[string]float64
	counts map[string][]float64
}

// NewReporter returns a Reporter for cfg.
func NewReporter(cfg Config) (*Reporter, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Reporter{cfg: cfg, log: cfg.Logger.With("component", "snapshot")}, nil
}

// Start publishes a first snapshot and then one every Interval until Stop.
// A Redis failure is logged, never fatal: the console then shows less.
func (r *Reporter) Start(ctx context.Context) error {
	ctx, r.stop = context.WithCancel(context.WithoutCancel(ctx))
	r.done = make(chan struct{})
	r.Report(ctx)
	go func() {
		defer close(r.done)
		t := time.NewTicker(r.cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				r.Report(ctx)
			}
		}
	}()
	return nil
}

// Stop stops reporting and removes this process's snapshot. Idempotent.
func (r *Reporter) Stop() {
	r.stopOnce.Do(func() {
		if r.stop == nil {
			return
		}
		r.stop()
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = r.cfg.Redis.ZRem(ctx, r.cfg.Prefix+"processes", r.cfg.Process).Err()
		_ = r.cfg.Redis.Del(ctx, r.cfg.Prefix+"p:"+r.cfg.Process).Err()
	})
}

// Report gathers and publishes one snapshot now.
func (r *Reporter) Report(ctx context.Context) {
	snap, err := r.take()
	if err != nil {
		r.log.WarnContext(ctx, "gather metrics", "err", err)
		return
	}
	body, err := json.Marshal(snap)
	if err != nil {
		r.log.WarnContext(ctx, "encode snapshot", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Interval)
	defer cancel()
	now := snap.At
	_, err = r.cfg.Redis.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, r.cfg.Prefix+"p:"+r.cfg.Process, body, r.cfg.TTL)
		p.ZAdd(ctx, r.cfg.Prefix+"processes", redis.Z{Score: float64(now.UnixMilli()), Member: r.cfg.Process})
		p.ZRemRangeByScore(ctx, r.cfg.Prefix+"processes", "-inf", strconv.FormatInt(now.Add(-r.cfg.TTL).UnixMilli(), 10))
		return nil
	})
	if err != nil {
		r.log.DebugContext(ctx, "publish snapshot", "err", err)
	}
}

// take gathers the chosen families and turns them into a snapshot.
func (r *Reporter) take() (*Snapshot, error) {
	families, err := r.cfg.Gatherer.Gather()
	if err != nil && len(families) == 0 {
		return nil, err
	}
	now := r.cfg.Now()
	cur := reading{at: now, totals: map[string]float64{}, counts: map[string][]float64{}}
	snap := &Snapshot{Process: r.cfg.Process, At: now}
	for _, f := range families {
		if !slices.Contains(r.cfg.Names, f.GetName()) {
			continue
		}
		for _, m := range f.GetMetric() {
			s := Series{Name: f.GetName(), Labels: labels(m)}
			key := seriesKey(&s)
			switch f.GetType() {
			case dto.MetricType_GAUGE:
				s.Value = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				s.Value = m.GetCounter().GetValue()
				cur.totals[key] = s.Value
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					if math.IsInf(b.GetUpperBound(), 1) {
						continue
					}
					s.Bounds = append(s.Bounds, b.GetUpperBound())
					s.Counts = append(s.Counts, float64(b.GetCumulativeCount()))
				}
				s.Count = float64(h.GetSampleCount())
				cur.counts[key] = append(slices.Clone(s.Counts), s.Count)
			default:
				continue
			}
			snap.Series = append(snap.Series, s)
		}
	}
	// Rates and histogram deltas against the oldest reading in the window.
	for len(r.history) > 0 && now.Sub(r.history[0].at) > r.cfg.Window {
		r.history = r.history[1:]
	}
	if len(r.history) > 0 {
		old := r.history[0]
		dt := now.Sub(old.at).Seconds()
		snap.Window = dt
		for i := range snap.Series {
			s := &snap.Series[i]
			key := seriesKey(s)
			// A series born within the window started from zero.
			if _, isCounter := cur.totals[key]; isCounter && dt > 0 {
				s.Rate = max(s.Value-old.totals[key], 0) / dt
			}
			if s.Bounds != nil {
				prev, ok := old.counts[key]
				if !ok {
					prev = make([]float64, len(s.Counts)+1)
				}
				if len(prev) == len(s.Counts)+1 {
					for j := range s.Counts {
						s.Counts[j] = max(s.Counts[j]-prev[j], 0)
					}
					s.Count = max(s.Count-prev[len(prev)-1], 0)
				}
			}
		}
	} else {
		// No history yet: nothing happened within a window we know of.
		for i := range snap.Series {
			s := &snap.Series[i]
			if s.Bounds != nil {
				clear(s.Counts)
				s.Count = 0
			}
		}
	}
	r.history = append(r.history, cur)
	return snap, nil
}

func labels(m *dto.Metric) map[string]string {
	if len(m.GetLabel()) == 0 {
		return nil
	}
	l := make(map[string]string, len(m.GetLabel()))
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

func seriesKey(s *Series) string {
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(s.Name)
	for _, k := range keys {
		b.WriteString("|" + k + "=" + s.Labels[k])
	}
	return b.String()
}

// Read returns the snapshots under prefix (empty = DefaultPrefix) of every
// process that reported within maxAge.
func Read(ctx context.Context, rdb *redis.Client, prefix string, now time.Time, maxAge time.Duration) ([]Snapshot, error) {
	prefix = cmp.Or(prefix, DefaultPrefix)
	procs, err := rdb.ZRangeByScore(ctx, prefix+"processes", &redis.ZRangeBy{
		Min: strconv.FormatInt(now.Add(-maxAge).UnixMilli(), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("snapshot: read: %w", err)
	}
	if len(procs) == 0 {
		return nil, nil
	}
	keys := make([]string, len(procs))
	for i, p := range procs {
		keys[i] = prefix + "p:" + p
	}
	values, err := rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("snapshot: read: %w", err)
	}
	snaps := make([]Snapshot, 0, len(values))
	for _, v := range values {
		s, ok := v.(string)
		if !ok {
			continue // expired between the two reads
		}
		var snap Snapshot
		if err := json.Unmarshal([]byte(s), &snap); err != nil {
			continue
		}
		snaps = append(snaps, snap)
	}
	return snaps, nil
}
