package dashboard

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// liveView is the overview's live panel: the latest sample, narrowed to
// the operator's shop where the numbers are a shop's.
type liveView struct {
	*Sample
	PollSeconds      int
	BacklogTotal     float64
	Priorities       []string
	OutboxDead       int64
	OutboxStates     []namedValue
	Sources          []namedValue
	FallbackSources  []namedValue
	Spend            []namedValue
	OldestDueSeconds float64
}

// shopCounts caches a shop operator's outbox and DLQ counts for a poll
// interval, so many open overviews cost one count each. Past it, the last
// counts are served while one refresh per shop runs (singleflight, in the
// background Console.Stop waits for): a shop's overview waits for Postgres
// only the first time the process shows it, or when its counts are older
// than shopCountsStale (refreshes failing). The shop's succeeded actions,
// which grow with its history, are counted again only every
// storage.SucceededCountEvery (ShopActionCounts).
type shopCounts struct {
	mu      sync.Mutex
	m       map[string]shopCount
	refresh singleflight.Group
}

type shopCount struct {
	at     time.Time
	outbox map[peakdesk.ActionState]int64
	dlq    int64
}

// shopCountTimeout bounds a refresh, which outlives the request that
// started it. Counts older than shopCountsStale are not served: the page
// waits for the refresh, and says so if it fails (Postgres down).
const (
	shopCountTimeout = 30 * time.Second
	shopCountsStale  = time.Minute
)

func (c *Console) live(r *http.Request, rq *request) (*liveView, error) {
	smp := c.sampler.last()
	v := &liveView{Sample: smp, PollSeconds: max(int(c.cfg.PollInterval/time.Second), 1),
		OldestDueSeconds: smp.OldestDueSeconds}
	for _, p := range peakdesk.Priorities {
		v.Priorities = append(v.Priorities, string(p))
		if x := smp.Backlog[string(p)]; !math.IsNaN(x) {
			v.BacklogTotal += x
		}
	}
	outbox := map[string]int64{}
	for k, n := range smp.Outbox {
		outbox[k] = n
	}
	spend := smp.Spend
	if shop := rq.op.ShopID; shop != "" {
		sc, err := c.shopCounts(r, shop)
		if err != nil {
			return nil, err
		}
		outbox = map[string]int64{}
		for k, n := range sc.outbox {
			outbox[string(k)] = n
		}
		cp := *smp
		cp.DLQ = sc.dlq
		cp.FollowUps = 0 // platform-wide only
		cp.OrderFinalP99, cp.OrderLookupsPerSec, cp.OrderCoalescedPerSec = 0, 0, 0
		v.Sample = &cp
		v.OldestDueSeconds = 0
		spend = map[string]int64{shop: smp.Spend[shop]}
	}
	v.OutboxDead = outbox[string(peakdesk.ActionDead)]
	for _, s := range []peakdesk.ActionState{peakdesk.ActionPending, peakdesk.ActionRunning, peakdesk.ActionRetrying,
		peakdesk.ActionSucceeded, peakdesk.ActionCanceled} {
		v.OutboxStates = append(v.OutboxStates, namedValue{Name: string(s), Value: float64(outbox[string(s)])})
	}
	v.Sources = sortedValues(smp.Sources)
	v.FallbackSources = sortedValues(smp.Fallbacks)
	for shop, micro := range spend {
		v.Spend = append(v.Spend, namedValue{Name: shop, Value: float64(micro)})
	}
	sort.Slice(v.Spend, func(i, j int) bool { return v.Spend[i].Value > v.Spend[j].Value })
	return v, nil
}

func sortedValues(m map[string]float64) []namedValue {
	out := make([]namedValue, 0, len(m))
	for k, x := range m {
		out = append(out, namedValue{Name: k, Value: x})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (c *Console) shopCounts(r *http.Request, shop string) (shopCount, error) {
	c.counts.mu.Lock()
	last, ok := c.counts.m[shop]
	c.counts.mu.Unlock()
	age := c.cfg.Now().Sub(last.at)
	if ok && age < c.cfg.PollInterval {
		return last, nil
	}
	done := c.counts.refresh.DoChan(shop, func() (any, error) {
		var sc shopCount
		err := c.background(func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, shopCountTimeout)
			defer cancel()
			var err error
			if sc, err = c.countShop(ctx, shop); err != nil {
				if ctx.Err() == nil {
					c.log.WarnContext(ctx, "counting a shop's outbox and dead letters failed", "shop", shop, "err", err)
				}
				return err
			}
			c.counts.mu.Lock()
			defer c.counts.mu.Unlock()
			if c.counts.m == nil {
				c.counts.m = map[string]shopCount{}
			}
			c.counts.m[shop] = sc
			return nil
		})
		return sc, err
	})
	if ok && age < shopCountsStale {
		return last, nil // while they are counted again
	}
	ctx := r.Context()
	select {
	case res := <-done:
		if res.Err != nil {
			return shopCount{}, res.Err
		}
		return res.Val.(shopCount), nil
	case <-ctx.Done():
		return shopCount{}, ctx.Err()
	}
}

func (c *Console) countShop(ctx context.Context, shop string) (shopCount, error) {
	outbox, err := c.cfg.DB.ShopActionCounts(ctx, shop, storage.SucceededCountEvery)
	if err != nil {
		return shopCount{}, err
	}
	dlq, err := c.cfg.DB.CountDLQ(ctx, storage.DLQFilter{Scope: shop, State: storage.DLQDead})
	if err != nil {
		return shopCount{}, err
	}
	return shopCount{at: c.cfg.Now(), outbox: outbox, dlq: dlq}, nil
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, rq *request) error {
	v, err := c.live(r, rq)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "overview", "", "overview.title", "overview", v)
	return nil
}

func (c *Console) overviewLive(w http.ResponseWriter, r *http.Request, rq *request) error {
	v, err := c.live(r, rq)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "overview", "live", "overview.title", "overview", v)
	return nil
}

// chartData is what console.js draws: one time axis, and per chart its
// series' labels and values.
type chartData struct {
	T      []int64          `json:"t"`
	Charts map[string]chart `json:"charts"`
}

type chart struct {
	Labels []string    `json:"labels"`
	Values [][]float64 `json:"values"`
}

// overviewSeries returns the sampled series of the last hour or day, about
// 360–720 points either way.
func (c *Console) overviewSeries(w http.ResponseWriter, r *http.Request, rq *request) error {
	span, bucket := time.Hour, 10*time.Second
	if r.URL.Query().Get("range") == "24h" {
		span, bucket = 24*time.Hour, 2*time.Minute
	}
	bucket = max(bucket, c.cfg.SampleInterval)
	rows, err := c.cfg.DB.SampleSeries(r.Context(), c.cfg.Now().Add(-span), bucket)
	if err != nil {
		return err
	}
	d := chartData{T: make([]int64, len(rows)), Charts: map[string]chart{}}
	col := func(get func(*storage.SampleRow) float64) []float64 {
		out := make([]float64, len(rows))
		for i := range rows {
			out[i] = math.Round(get(&rows[i])*1000) / 1000
		}
		return out
	}
	for i := range rows {
		d.T[i] = rows[i].At.Unix()
	}
	d.Charts["backlog"] = chart{Labels: []string{"p0", "p1", "p2"}, Values: [][]float64{
		col(func(s *storage.SampleRow) float64 { return s.BacklogP0 }),
		col(func(s *storage.SampleRow) float64 { return s.BacklogP1 }),
		col(func(s *storage.SampleRow) float64 { return s.BacklogP2 })}}
	d.Charts["throughput"] = chart{Labels: []string{rq.t("series.answers"), rq.t("series.inflight"), rq.t("series.limit")},
		Values: [][]float64{
			col(func(s *storage.SampleRow) float64 { return s.AnswersPerS }),
			col(func(s *storage.SampleRow) float64 { return s.InFlight }),
			col(func(s *storage.SampleRow) float64 { return s.Concurrency })}}
	d.Charts["latency"] = chart{Labels: []string{"p0 p99", "p1 p99", "p2 p99"}, Values: [][]float64{
		col(func(s *storage.SampleRow) float64 { return s.P99P0 }),
		col(func(s *storage.SampleRow) float64 { return s.P99P1 }),
		col(func(s *storage.SampleRow) float64 { return s.P99P2 })}}
	trouble := chart{Labels: []string{rq.t("series.429"), rq.t("series.fallbacks")}, Values: [][]float64{
		col(func(s *storage.SampleRow) float64 { return s.LLM429PerS }),
		col(func(s *storage.SampleRow) float64 { return s.FallbacksPerS })}}
	// Outbox and DLQ totals span every shop: platform operators only.
	if rq.op.ShopID == "" {
		trouble.Labels = append(trouble.Labels, rq.t("series.due"), rq.t("series.dead"), rq.t("series.dlq"))
		trouble.Values = append(trouble.Values,
			col(func(s *storage.SampleRow) float64 { return s.OutboxDue }),
			col(func(s *storage.SampleRow) float64 { return s.OutboxDead }),
			col(func(s *storage.SampleRow) float64 { return s.DLQ }))
	}
	d.Charts["trouble"] = trouble
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(d)
}
