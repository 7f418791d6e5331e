package loadtest

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// LoadReport is the outcome of one load test run. Its JSON form is the
// machine-readable report (--json):
//
//	{
//	  "scenario": "burst", "config": {…}, "env": {"go", "os", "arch", "cpus", "hostname", "cpu_model"},
//	  "started_at": RFC 3339, "duration_s": whole run, "offer_duration_s": first to last offer,
//	  "offers_per_s": offered / offer_duration_s,
//	  "shedding": {"from_s", "to_s", "offers", "offers_per_s", "answered_on_post", "rejected_429"},
//	  "offered", "accepted", "answered", "answered_on_post",
//	  "rejected": {"rate_limited_429", "overloaded_503"},
//	  "errors": {"400 invalid_argument": n, "timeout": n, …},
//	  "lost", "failed", "shed_unstored", "duplicates", "redeliveries", "unmatched_replies",
//	  "sse_missed", "sse_reconnects", "audit_errors", "delayed_by_concurrency",
//	  "sources": {"llm": n, "faq": n, …}, "questions": {"hot": n, …}, "hints": {"p0": n, "none": n, …},
//	  "by_priority": {"p0": {"accepted", "answered", "answered_on_post", "lost", "duplicates"}, …},
//	  "latency_ms": {
//	    "offer_lag": {…},
//	    "all": {"accept": {"count", "mean", "p50", "p90", "p99", "max"}, "answer": {…}},
//	    "p0": {"accept": {…}, "answer": {…}}, "p1": …, "p2": …
//	  },
//	  "series": [{"t": 0, "offered", "accepted", "answered", "rejected", "errors", "backlog",
//	              "answer_ms": {"p0": {"count", "p50", "p99"}, …}}, …]
//	}
//
// Priorities are the ones the server assigned (from the 202), not the hints.
// Accept latency is POST sent → response; answer latency is POST sent → first
// reply seen (a 200 answered on POST counts with its request time). Series
// entries are whole seconds since the start; answer_ms holds the latency of
// the messages first answered in that second.
type LoadReport struct {
	Scenario       Scenario       `json:"scenario"`
	Config         LoadConfigEcho `json:"config"`
	Env            LoadEnv        `json:"env"`
	StartedAt      time.Time      `json:"started_at"`
	DurationS      float64        `json:"duration_s"`
	OfferDurationS float64        `json:"offer_duration_s"`
	// OffersPerS is Offered over OfferDurationS.
	OffersPerS float64 `json:"offers_per_s"`
	// Shedding is the stretch in which the edge shed load, if it did.
	Shedding *LoadShedding `json:"shedding,omitempty"`

	Offered        int `json:"offered"`
	Accepted       int `json:"accepted"`
	Answered       int `json:"answered"`
	AnsweredOnPost int `json:"answered_on_post"`
	// Rejected counts the offers the edge refused explicitly.
	Rejected LoadRejected `json:"rejected"`
	// Errors counts every other failed offer, by "status code" or by
	// transport failure ("timeout", "transport", "canceled", …).
	Errors       map[string]int `json:"errors"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	// Lost counts accepted messages unanswered by the deadline; Failed is
	// how many of them the server reported as failed.
	Lost   int `json:"lost"`
	Failed int `json:"failed"`
	// ShedUnstored counts answers given on a POST (a shed message answered
	// from the FAQ) never seen stored by the deadline: no reply event, and
	// not in the conversation read back. Such an answer is lost too.
	ShedUnstored int `json:"shed_unstored"`
	// Duplicates counts messages answered by more than one distinct reply.
	Duplicates int `json:"duplicates"`
	// Redeliveries counts reply events seen again with the same reply_id.
	Redeliveries int `json:"redeliveries"`
	// UnmatchedReplies counts message ids in replies that no accepted
	// message of this run had.
	UnmatchedReplies int `json:"unmatched_replies"`
	// SSEMissed counts messages SSE never delivered but GET showed answered.
	SSEMissed     int `json:"sse_missed"`
	SSEReconnects int `json:"sse_reconnects"`
	// AuditErrors counts conversations the poll-mode audit could not read.
	AuditErrors int `json:"audit_errors"`
	// DelayedByConcurrency counts offers that had to wait for a free slot.
	DelayedByConcurrency int `json:"delayed_by_concurrency"`

	Sources    map[string]int                `json:"sources"`
	Questions  map[string]int                `json:"questions"`
	Hints      map[string]int                `json:"hints"`
	ByPriority map[string]LoadPriorityCounts `json:"by_priority"`
	Latency    LoadLatency                   `json:"latency_ms"`
	Series     []LoadSecond                  `json:"series"`

	LostSamples      []string `json:"lost_samples,omitempty"`
	DuplicateSamples []string `json:"duplicate_samples,omitempty"`
}

// LoadShedding is the stretch of a run in which the edge shed load: from
// the first to the last offer answered on its POST (200, a shed message
// answered from the FAQ) or refused with 429 (shed without an answer, or a
// rate limit), in seconds since the start. Offers counts every offer that
// completed within it, whatever its outcome, so OffersPerS is how fast the
// edge took offers while shedding.
type LoadShedding struct {
	FromS          float64 `json:"from_s"`
	ToS            float64 `json:"to_s"`
	Offers         int     `json:"offers"`
	OffersPerS     float64 `json:"offers_per_s"`
	AnsweredOnPost int     `json:"answered_on_post"`
	Rejected429    int     `json:"rejected_429"`
}

// loadShedding finds the shedding stretch of offers; nil when nothing was
// shed.
func loadShedding(start time.Time, offers []*loadOffer) *LoadShedding {
	var from, to time.Time
	sh := &LoadShedding{}
	for _, o := range offers {
		shed := o.outcome == loadRateLimited || (o.outcome == loadAccepted && o.onPost)
		if !shed {
			continue
		}
		if o.outcome == loadRateLimited {
			sh.Rejected429++
		} else {
			sh.AnsweredOnPost++
		}
		if from.IsZero() || o.doneAt.Before(from) {
			from = o.doneAt
		}
		if o.doneAt.After(to) {
			to = o.doneAt
		}
	}
	if from.IsZero() {
		return nil
	}
	for _, o := range offers {
		if o.outcome != loadNotSent && !o.doneAt.Before(from) && !o.doneAt.After(to) {
			sh.Offers++
		}
	}
	sh.FromS, sh.ToS = loadRound(from.Sub(start).Seconds()), loadRound(to.Sub(start).Seconds())
	if d := to.Sub(from).Seconds(); d > 0 {
		sh.OffersPerS = loadRound(float64(sh.Offers) / d)
	}
	return sh
}

// LoadConfigEcho is the configuration a report was made with (no secret).
type LoadConfigEcho struct {
	URL            string     `json:"url"`
	Shop           string     `json:"shop"`
	Scenario       Scenario   `json:"scenario"`
	Rate           float64    `json:"rate,omitempty"`
	RateEnd        float64    `json:"rate_end,omitempty"`
	Duration       string     `json:"duration,omitempty"`
	Messages       int        `json:"messages,omitempty"`
	Within         string     `json:"within,omitempty"`
	Planned        int        `json:"planned"`
	Concurrency    int        `json:"concurrency"`
	Conversations  int        `json:"conversations"`
	Mix            LoadMix    `json:"mix"`
	Follow         LoadFollow `json:"follow"`
	Deadline       string     `json:"deadline"`
	Linger         string     `json:"linger"`
	RequestTimeout string     `json:"request_timeout"`
	Seed           int64      `json:"seed"`
}

// LoadEnv describes the machine that generated the load.
type LoadEnv struct {
	Go       string `json:"go"`
	OS       string `json:"os"`
	Arch     string `json:"arch"`
	CPUs     int    `json:"cpus"`
	Hostname string `json:"hostname,omitempty"`
	CPUModel string `json:"cpu_model,omitempty"`
}

// LoadRejected counts explicit refusals.
type LoadRejected struct {
	RateLimited429 int `json:"rate_limited_429"`
	Overloaded503  int `json:"overloaded_503"`
}

// LoadPriorityCounts are the counts of one server-assigned priority.
type LoadPriorityCounts struct {
	Accepted       int `json:"accepted"`
	Answered       int `json:"answered"`
	AnsweredOnPost int `json:"answered_on_post"`
	Lost           int `json:"lost"`
	Duplicates     int `json:"duplicates"`
}

// LoadPercentiles summarises a latency distribution in milliseconds.
type LoadPercentiles struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// LoadLatencySet holds the accept and answer latency of one group.
type LoadLatencySet struct {
	Accept LoadPercentiles `json:"accept"`
	Answer LoadPercentiles `json:"answer"`
}

// LoadLatency holds latency by group: "all" and each priority, plus how late
// offers went out against their schedule.
type LoadLatency struct {
	OfferLag   LoadPercentiles
	ByPriority map[string]LoadLatencySet // keys "all", "p0", "p1", "p2", …
}

// MarshalJSON flattens the groups next to "offer_lag", so that paths read
// latency_ms.p0.answer.p99.
func (l LoadLatency) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(l.ByPriority)+1)
	for k, v := range l.ByPriority {
		m[k] = v
	}
	m["offer_lag"] = l.OfferLag
	return json.Marshal(m)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *LoadLatency) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	l.ByPriority = make(map[string]LoadLatencySet, len(m))
	for k, v := range m {
		if k == "offer_lag" {
			if err := json.Unmarshal(v, &l.OfferLag); err != nil {
				return err
			}
			continue
		}
		var s LoadLatencySet
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		l.ByPriority[k] = s
	}
	return nil
}

// LoadSecond is one second of the run.
type LoadSecond struct {
	T        int `json:"t"`
	Offered  int `json:"offered"`
	Accepted int `json:"accepted"`
	Answered int `json:"answered"`
	Rejected int `json:"rejected"`
	Errors   int `json:"errors"`
	// Backlog is accepted − answered, cumulative, at the end of the second.
	Backlog int `json:"backlog"`
	// Answer is the answer latency by priority of the messages first
	// answered in this second.
	Answer map[string]LoadSecondLatency `json:"answer_ms,omitempty"`
}

// LoadSecondLatency is the answer latency of one priority in one second.
type LoadSecondLatency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
}

// Check returns an error when the run lost or duplicated answers, or when
// not one offered message was accepted (a run against a dead or misconfigured
// target proves nothing), so that scripts can gate on it.
func (rep *LoadReport) Check() error {
	switch {
	case rep.Lost > 0 || rep.Duplicates > 0 || rep.ShedUnstored > 0:
		return fmt.Errorf("load check: %d lost, %d duplicates, %d answers on POST not stored",
			rep.Lost, rep.Duplicates, rep.ShedUnstored)
	case rep.Offered > 0 && rep.Accepted == 0:
		return fmt.Errorf("load check: none of %d offered messages was accepted", rep.Offered)
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (rep *LoadReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return fmt.Errorf("write load report json: %w", err)
	}
	return nil
}

// loadPriorityOrder sorts priorities p0, p1, p2 first, then the rest by name.
func loadPriorityOrder(keys []string) []string {
	rank := func(k string) string {
		switch k {
		case "all":
			return "0"
		case "p0", "p1", "p2":
			return "1" + k
		}
		return "2" + k
	}
	slices.SortFunc(keys, func(a, b string) int { return strings.Compare(rank(a), rank(b)) })
	return keys
}

// WriteText writes the report as readable tables.
func (rep *LoadReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	c := rep.Config
	p("peakdesk load test: scenario %s, %s follow, started %s\n", rep.Scenario, c.Follow, rep.StartedAt.Format(time.RFC3339))
	p("target %s, shop %s, %d planned, concurrency %d, %d conversations, mix %s, seed %d\n",
		c.URL, c.Shop, c.Planned, c.Concurrency, c.Conversations, c.Mix, c.Seed)
	p("run %.1f s (offers %.1f s) on %s %s/%s, %d CPUs %s\n\n",
		rep.DurationS, rep.OfferDurationS, rep.Env.Go, rep.Env.OS, rep.Env.Arch, rep.Env.CPUs, rep.Env.CPUModel)

	p("offers/s %.0f", rep.OffersPerS)
	if sh := rep.Shedding; sh != nil {
		p("; while shedding (%.1f–%.1f s) %.0f offers/s: %d offers, %d answered on POST, %d refused 429",
			sh.FromS, sh.ToS, sh.OffersPerS, sh.Offers, sh.AnsweredOnPost, sh.Rejected429)
	}
	p("\n\n")
	p("offered\taccepted\tanswered\ton POST\t429\t503\terrors\tlost\tfailed\tduplicates\tredelivered\t\n")
	p("%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n\n",
		rep.Offered, rep.Accepted, rep.Answered, rep.AnsweredOnPost, rep.Rejected.RateLimited429,
		rep.Rejected.Overloaded503, loadSum(rep.Errors), rep.Lost, rep.Failed, rep.Duplicates, rep.Redeliveries)

	p("answers on POST not seen stored %d, delayed by concurrency %d, SSE reconnects %d, SSE missed %d, unmatched replies %d, audit errors %d\n",
		rep.ShedUnstored, rep.DelayedByConcurrency, rep.SSEReconnects, rep.SSEMissed, rep.UnmatchedReplies, rep.AuditErrors)
	p("sources: %s\n", loadCounts(rep.Sources))
	p("questions: %s\n", loadCounts(rep.Questions))
	p("hints: %s\n", loadCounts(rep.Hints))
	if len(rep.Errors) > 0 {
		p("errors: %s\n", loadCounts(rep.Errors))
	}
	p("\n")

	p("latency ms\t\tcount\tmean\tp50\tp90\tp99\tmax\t\n")
	row := func(group, kind string, l LoadPercentiles) {
		p("%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", group, kind, l.Count, l.Mean, l.P50, l.P90, l.P99, l.Max)
	}
	row("offer lag", "", rep.Latency.OfferLag)
	for _, k := range loadPriorityOrder(slices.Collect(maps.Keys(rep.Latency.ByPriority))) {
		s := rep.Latency.ByPriority[k]
		row(k, "accept", s.Accept)
		row(k, "answer", s.Answer)
	}
	if len(rep.ByPriority) > 0 {
		p("\npriority\taccepted\tanswered\ton POST\tlost\tduplicates\t\n")
		for _, k := range loadPriorityOrder(slices.Collect(maps.Keys(rep.ByPriority))) {
			b := rep.ByPriority[k]
			p("%s\t%d\t%d\t%d\t%d\t%d\t\n", k, b.Accepted, b.Answered, b.AnsweredOnPost, b.Lost, b.Duplicates)
		}
	}
	for _, s := range rep.LostSamples {
		p("lost: %s\n", s)
	}
	for _, s := range rep.DuplicateSamples {
		p("duplicate: %s\n", s)
	}
	for _, s := range rep.ErrorSamples {
		p("error: %s\n", s)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write load report: %w", err)
	}
	return nil
}

func loadSum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// loadCounts formats counts as "a 3, b 2", largest first.
func loadCounts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// loadNewHist returns a histogram of microseconds from 1 µs to 1 h at three
// significant figures.
func loadNewHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 3)
}

func loadRecord(h *hdrhistogram.Histogram, d time.Duration) {
	us := min(max(d.Microseconds(), 1), h.HighestTrackableValue())
	_ = h.RecordValue(us) // in range by construction
}

func loadMS(us float64) float64 { return math.Round(us) / 1000 }

func loadPercentilesOf(h *hdrhistogram.Histogram) LoadPercentiles {
	if h == nil || h.TotalCount() == 0 {
		return LoadPercentiles{}
	}
	return LoadPercentiles{
		Count: h.TotalCount(),
		Mean:  loadMS(h.Mean()),
		P50:   loadMS(float64(h.ValueAtQuantile(50))),
		P90:   loadMS(float64(h.ValueAtQuantile(90))),
		P99:   loadMS(float64(h.ValueAtQuantile(99))),
		Max:   loadMS(float64(h.Max())),
	}
}

// loadHists is a lazily filled set of histograms by group.
type loadHists map[string]*hdrhistogram.Histogram

func (hs loadHists) record(group string, d time.Duration) {
	h := hs[group]
	if h == nil {
		h = loadNewHist()
		hs[group] = h
	}
	loadRecord(h, d)
}

// loadEnvironment describes this machine, best effort.
func loadEnvironment() LoadEnv {
	env := LoadEnv{Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	env.Hostname, _ = os.Hostname()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				env.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return env
}

// report builds the report from the offers once every goroutine is done.
func (r *loadRun) report(end time.Time) *LoadReport {
	cfg := r.cfg
	rep := &LoadReport{
		Scenario: cfg.Scenario,
		Config: LoadConfigEcho{
			URL: cfg.BaseURL, Shop: cfg.Shop, Scenario: cfg.Scenario,
			Planned: len(r.offers), Concurrency: cfg.Concurrency, Conversations: cfg.Conversations,
			Mix: cfg.Mix, Follow: cfg.Follow, Deadline: cfg.Deadline.String(), Linger: cfg.Linger.String(),
			RequestTimeout: cfg.RequestTimeout.String(), Seed: cfg.Seed,
		},
		Env:                  loadEnvironment(),
		StartedAt:            r.start,
		DurationS:            loadRound(end.Sub(r.start).Seconds()),
		Errors:               map[string]int{},
		Sources:              map[string]int{},
		Questions:            map[string]int{},
		Hints:                map[string]int{},
		ByPriority:           map[string]LoadPriorityCounts{},
		DelayedByConcurrency: r.delayed,
	}
	switch cfg.Scenario {
	case ScenarioSteady:
		rep.Config.Rate, rep.Config.Duration = cfg.Rate, cfg.Duration.String()
	case ScenarioRamp:
		rep.Config.Rate, rep.Config.RateEnd, rep.Config.Duration = cfg.Rate, cfg.RateEnd, cfg.Duration.String()
	case ScenarioBurst:
		rep.Config.Messages, rep.Config.Within = cfg.Messages, cfg.Within.String()
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	rep.Redeliveries = r.redeliveries
	rep.SSEReconnects = r.reconnects
	rep.AuditErrors = r.auditErrors
	rep.ErrorSamples = slices.Clone(r.errSamples)
	rep.UnmatchedReplies = len(r.pending)

	// Per-second buckets grow as events land in later seconds.
	var series []LoadSecond
	bucket := func(t time.Time) *LoadSecond {
		s := max(int(t.Sub(r.start)/time.Second), 0)
		for len(series) <= s {
			series = append(series, LoadSecond{T: len(series)})
		}
		return &series[s]
	}
	type secPrio struct {
		sec  int
		prio string
	}
	perSecond := map[secPrio][]time.Duration{}

	lag := loadNewHist()
	accept, answer := loadHists{}, loadHists{}
	var firstSent, lastSent time.Time
	for _, o := range r.offers {
		if o.outcome == loadNotSent {
			continue
		}
		rep.Offered++
		rep.Questions[o.kind]++
		rep.Hints[cmp.Or(o.hint, "none")]++
		loadRecord(lag, o.sentAt.Sub(o.due))
		bucket(o.sentAt).Offered++
		if firstSent.IsZero() || o.sentAt.Before(firstSent) {
			firstSent = o.sentAt
		}
		if o.sentAt.After(lastSent) {
			lastSent = o.sentAt
		}

		switch o.outcome {
		case loadRateLimited:
			rep.Rejected.RateLimited429++
			bucket(o.doneAt).Rejected++
			continue
		case loadOverloaded:
			rep.Rejected.Overloaded503++
			bucket(o.doneAt).Rejected++
			continue
		case loadFailed:
			rep.Errors[o.errKey]++
			bucket(o.doneAt).Errors++
			continue
		}

		// Accepted.
		pc := rep.ByPriority[o.priority]
		rep.Accepted++
		pc.Accepted++
		bucket(o.doneAt).Accepted++
		accept.record("all", o.doneAt.Sub(o.sentAt))
		accept.record(o.priority, o.doneAt.Sub(o.sentAt))
		if o.onPost {
			rep.AnsweredOnPost++
			pc.AnsweredOnPost++
			if !o.stored {
				rep.ShedUnstored++
				if len(rep.LostSamples) < 10 {
					rep.LostSamples = append(rep.LostSamples, fmt.Sprintf("answer %s to message %s (%s, %q) not seen stored",
						o.postReply, o.messageID, o.priority, o.text))
				}
			}
		}
		if o.missed {
			rep.SSEMissed++
		}
		if o.answeredAt.IsZero() {
			rep.Lost++
			pc.Lost++
			if o.failed {
				rep.Failed++
			}
			if len(rep.LostSamples) < 10 {
				rep.LostSamples = append(rep.LostSamples, fmt.Sprintf("message %s (%s, %q)", o.messageID, o.priority, o.text))
			}
		} else {
			rep.Answered++
			pc.Answered++
			rep.Sources[o.source]++
			bucket(o.answeredAt).Answered++
			d := o.answeredAt.Sub(o.sentAt)
			answer.record("all", d)
			answer.record(o.priority, d)
			k := secPrio{int(o.answeredAt.Sub(r.start) / time.Second), o.priority}
			perSecond[k] = append(perSecond[k], d)
		}
		if len(o.replyIDs) > 1 {
			rep.Duplicates++
			pc.Duplicates++
			if len(rep.DuplicateSamples) < 10 {
				rep.DuplicateSamples = append(rep.DuplicateSamples, fmt.Sprintf("message %s answered by replies %s", o.messageID, strings.Join(o.replyIDs, ", ")))
			}
		}
		rep.ByPriority[o.priority] = pc
	}
	if !r.followEnd.IsZero() {
		bucket(r.followEnd)
	}
	if !firstSent.IsZero() {
		rep.OfferDurationS = loadRound(lastSent.Sub(firstSent).Seconds())
		if rep.OfferDurationS > 0 {
			rep.OffersPerS = loadRound(float64(rep.Offered) / rep.OfferDurationS)
		}
	}
	rep.Shedding = loadShedding(r.start, r.offers)

	rep.Latency = LoadLatency{OfferLag: loadPercentilesOf(lag), ByPriority: map[string]LoadLatencySet{}}
	for _, g := range slices.Collect(maps.Keys(accept)) {
		rep.Latency.ByPriority[g] = LoadLatencySet{Accept: loadPercentilesOf(accept[g]), Answer: loadPercentilesOf(answer[g])}
	}

	// Backlog and per-second latency.
	backlog := 0
	for i := range series {
		backlog += series[i].Accepted - series[i].Answered
		series[i].Backlog = backlog
	}
	scratch := loadNewHist()
	for k, ds := range perSecond {
		scratch.Reset()
		for _, d := range ds {
			loadRecord(scratch, d)
		}
		s := &series[k.sec]
		if s.Answer == nil {
			s.Answer = map[string]LoadSecondLatency{}
		}
		pp := loadPercentilesOf(scratch)
		s.Answer[k.prio] = LoadSecondLatency{Count: pp.Count, P50: pp.P50, P99: pp.P99}
	}
	rep.Series = series
	if rep.Series == nil {
		rep.Series = []LoadSecond{}
	}
	return rep
}

func loadRound(x float64) float64 { return math.Round(x*1000) / 1000 }
