package loadtest

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/sse"
)

// The push scenario measures reply delivery at midnight scale: Streams
// customers each hold one idle event stream (GET /v1/events) open, all
// opened at once; Replies of them ask a question while every stream is
// open, and the time from the reply's write (its created_at: the moment its
// row was written, in the transaction that stores it) to its arrival on the
// stream is the live delivery latency — reported beside the time from the
// question's POST to the arrival, which adds the answer's own work; then Storm of them drop their connection
// at once, get a reply while away, and reconnect at once with their
// Last-Event-ID — every missed reply must arrive once, and no reply of the
// whole run twice. With MetricsURL the edge's resident memory is read
// before and after the streams open, for the cost of an idle stream.
//
// Streams are plain HTTP/1.1 connections read by one goroutine each (no
// http.Transport), so the generator itself stays small beside the edge.

// PushConfig configures a push run. Zero fields take the defaults named in
// their comments.
type PushConfig struct {
	// BaseURL is the peakdesk ingest edge (http only). Required.
	BaseURL string
	// Secret signs the customers' tokens (the target's
	// PEAKDESK_JWT_SECRET). Required.
	Secret []byte
	// Shop is the tenant. Default "demo".
	Shop string
	// Streams is how many customers hold a stream open. Default 1000.
	Streams int
	// Replies is how many of them get a reply while all are open (live
	// delivery). Default min(Streams, 200).
	Replies int
	// Storm is how many customers drop and reconnect at once. Default
	// Streams / 2.
	Storm int
	// StormReplies is how many of the storm's customers get a reply while
	// away. Default min(Storm, 200).
	StormReplies int
	// Concurrency caps the generator's POSTs in flight. Default 64.
	Concurrency int
	// MetricsURL is the edge's /metrics; when set, its
	// process_resident_memory_bytes is read before and after the opens, and
	// its process_cpu_seconds_total before and after each delivery phase.
	MetricsURL string
	// Deadline bounds each phase. Default 60 s.
	Deadline time.Duration
	// Logger receives progress lines. Default: discard.
	Logger *slog.Logger
}

func (c *PushConfig) setDefaults() {
	c.Shop = cmp.Or(c.Shop, "demo")
	c.Streams = cmp.Or(c.Streams, 1000)
	c.Replies = cmp.Or(c.Replies, min(c.Streams, 200))
	c.Storm = cmp.Or(c.Storm, c.Streams/2)
	c.StormReplies = cmp.Or(c.StormReplies, min(c.Storm, 200))
	c.Concurrency = cmp.Or(c.Concurrency, 64)
	c.Deadline = cmp.Or(c.Deadline, 60*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *PushConfig) validate() error {
	u, err := url.Parse(c.BaseURL)
	switch {
	case err != nil || u.Scheme != "http" || u.Host == "":
		return fmt.Errorf("loadtest: push: BaseURL must be an http:// URL, got %q", c.BaseURL)
	case len(c.Secret) == 0:
		return errors.New("loadtest: push: Secret is required")
	case c.Streams < 1 || c.Replies < 0 || c.Storm < 0 || c.StormReplies < 0:
		return errors.New("loadtest: push: Streams must be positive, Replies, Storm and StormReplies not negative")
	case c.Replies > c.Streams || c.Storm > c.Streams || c.StormReplies > c.Storm:
		return errors.New("loadtest: push: Replies and Storm must be at most Streams, StormReplies at most Storm")
	}
	return nil
}

// PushReport is what a push run measured.
type PushReport struct {
	Env     LoadEnv   `json:"env"`
	Started time.Time `json:"started"`
	Config  struct {
		Streams, Replies, Storm, StormReplies int
	} `json:"config"`
	// Open is the opening of every stream at once.
	Open PushOpens `json:"open"`
	// RSS is the edge's resident memory (0s without MetricsURL).
	RSS struct {
		BaselineBytes  int64   `json:"baseline_bytes"`
		OpenBytes      int64   `json:"open_bytes"`
		BytesPerStream float64 `json:"bytes_per_stream"`
	} `json:"rss"`
	// Live is delivery while every stream is open.
	Live PushDelivery `json:"live"`
	// Reconnect is the storm's reopening, StormDelivery what it delivered.
	Reconnect     PushOpens    `json:"reconnect"`
	StormDelivery PushDelivery `json:"storm_delivery"`
	// Duplicates counts replies a customer received more than once, over
	// the whole run.
	Duplicates int `json:"duplicates"`
}

// PushOpens is one wave of opens.
type PushOpens struct {
	Attempted int `json:"attempted"`
	Opened    int `json:"opened"`
	// Retried counts opens tried again: answered 429/503 (after
	// Retry-After), or whose connection failed (after 0.1–1 s).
	Retried int `json:"retried"`
	// Errors counts the failed attempts by kind.
	Errors map[string]int `json:"errors,omitempty"`
	// AllOpenSeconds is from the wave's start until its last stream
	// opened.
	AllOpenSeconds float64         `json:"all_open_seconds"`
	Latency        LoadPercentiles `json:"latency_ms"`
}

// PushDelivery is a set of replies and their arrival on the streams.
type PushDelivery struct {
	Replies   int `json:"replies"`
	Delivered int `json:"delivered"`
	Lost      int `json:"lost"`
	// Failed counts questions not accepted and answered in time.
	Failed int `json:"failed"`
	// Latency is from the reply's write to its first arrival on its
	// customer's stream: the reply's created_at is the moment its row was
	// written (clock_timestamp()), so it still holds the rest of its
	// transaction (the other turns of a group commit after it, and the
	// commit), then the event's publication and the edge's delivery.
	Latency LoadPercentiles `json:"latency_ms"`
	// FromQuestion is from sending the question (the POST) to the reply's
	// arrival on the stream: everything the customer waits, answer included.
	FromQuestion LoadPercentiles `json:"question_latency_ms"`
	// EdgeCPUSeconds is the CPU the edge's process used during the phase
	// (from MetricsURL; 0 without). With `peakdesk dev` that process holds
	// the workers, JetStream and the simulators too.
	EdgeCPUSeconds float64 `json:"edge_cpu_seconds"`
	// EdgeWire is the edge's own share, from its
	// peakdesk_ingest_reply_delivery_seconds{stage="wire"} over the phase:
	// from the reply event's store in CHAT_EVENTS to its write on a live
	// stream (MetricsURL; zero without). Bucket bounds, so "at most".
	EdgeWire struct {
		Events    int     `json:"events"`
		P50AtMost float64 `json:"p50_at_most_ms"`
		P99AtMost float64 `json:"p99_at_most_ms"`
	} `json:"edge_wire"`
	// Seconds is the phase's length: questions asked until all arrived.
	Seconds float64 `json:"seconds"`
}

// Check fails a run that lost or duplicated a reply, or left a stream
// unopened.
func (rep *PushReport) Check() error {
	var errs []error
	if rep.Open.Opened < rep.Open.Attempted || rep.Reconnect.Opened < rep.Reconnect.Attempted {
		errs = append(errs, fmt.Errorf("streams not opened: %d of %d, reconnects %d of %d",
			rep.Open.Attempted-rep.Open.Opened, rep.Open.Attempted,
			rep.Reconnect.Attempted-rep.Reconnect.Opened, rep.Reconnect.Attempted))
	}
	if n := rep.Live.Lost + rep.StormDelivery.Lost; n > 0 {
		errs = append(errs, fmt.Errorf("%d replies never arrived", n))
	}
	if rep.Duplicates > 0 {
		errs = append(errs, fmt.Errorf("%d replies arrived twice", rep.Duplicates))
	}
	return errors.Join(errs...)
}

// WriteJSON writes the report as indented JSON.
func (rep *PushReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteText writes the report for people.
func (rep *PushReport) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "push: %d streams, %d live replies, storm of %d with %d missed replies (%s, %d CPUs, %s)\n",
		rep.Config.Streams, rep.Config.Replies, rep.Config.Storm, rep.Config.StormReplies,
		rep.Env.CPUModel, rep.Env.CPUs, rep.Started.UTC().Format(time.RFC3339))
	opens := func(name string, o PushOpens) {
		fmt.Fprintf(&b, "  %-10s %d/%d open in %.2f s (%d retried); open latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
			name, o.Opened, o.Attempted, o.AllOpenSeconds, o.Retried, o.Latency.P50, o.Latency.P99, o.Latency.Max)
		if len(o.Errors) > 0 {
			fmt.Fprintf(&b, "  %-10s failed attempts: %s\n", "", loadCounts(o.Errors))
		}
	}
	delivery := func(name, note string, d PushDelivery) {
		fmt.Fprintf(&b, "  %-10s %d/%d delivered, %d lost, %d questions failed in %.2f s%s\n",
			name, d.Delivered, d.Replies, d.Lost, d.Failed, d.Seconds, note)
		fmt.Fprintf(&b, "  %-10s reply written→client p50 %.1f ms, p99 %.1f ms, max %.1f ms (includes the rest of its transaction)\n",
			"", d.Latency.P50, d.Latency.P99, d.Latency.Max)
		fmt.Fprintf(&b, "  %-10s question POST→client  p50 %.1f ms, p99 %.1f ms, max %.1f ms (includes the answer)\n",
			"", d.FromQuestion.P50, d.FromQuestion.P99, d.FromQuestion.Max)
		if d.EdgeWire.Events > 0 {
			fmt.Fprintf(&b, "  %-10s of which the edge (event stored in CHAT_EVENTS→written to the stream): p50 ≤ %.0f ms, p99 ≤ %.0f ms over %d events\n",
				"", d.EdgeWire.P50AtMost, d.EdgeWire.P99AtMost, d.EdgeWire.Events)
		}
		if d.EdgeCPUSeconds > 0 {
			fmt.Fprintf(&b, "  %-10s edge process CPU %.2f s over the phase (%.0f %% of one core)\n",
				"", d.EdgeCPUSeconds, 100*d.EdgeCPUSeconds/max(d.Seconds, 0.001))
		}
	}
	opens("open", rep.Open)
	if rep.RSS.OpenBytes > 0 {
		fmt.Fprintf(&b, "  %-10s edge RSS %.1f MB → %.1f MB: %.1f KB per idle stream\n", "memory",
			float64(rep.RSS.BaselineBytes)/1e6, float64(rep.RSS.OpenBytes)/1e6, rep.RSS.BytesPerStream/1024)
	}
	delivery("live", "", rep.Live)
	opens("reconnect", rep.Reconnect)
	delivery("missed", " (latencies include the clients' absence and reconnect: not delivery)", rep.StormDelivery)
	fmt.Fprintf(&b, "  %-10s %d\n", "duplicates", rep.Duplicates)
	_, err := io.WriteString(w, b.String())
	return err
}

// pushClient is one customer and its stream.
type pushClient struct {
	user, token string

	mu     sync.Mutex
	conn   net.Conn
	lastID string
	// got counts each reply id received, over all of the client's
	// connections.
	got map[string]int
}

// pushRun is the state of one run.
type pushRun struct {
	cfg     PushConfig
	base    string
	host    string
	clients []*pushClient
	post    *http.Client
	readers sync.WaitGroup

	mu       sync.Mutex
	arrivals map[string]time.Time // reply id → first arrival
	changed  chan struct{}
}

// RunPush runs the push scenario against cfg.BaseURL.
func RunPush(ctx context.Context, cfg PushConfig) (*PushReport, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	u, _ := url.Parse(cfg.BaseURL)
	var idb [6]byte
	_, _ = rand.Read(idb[:])
	runID := hex.EncodeToString(idb[:])
	r := &pushRun{
		cfg:  cfg,
		base: strings.TrimRight(cfg.BaseURL, "/"),
		host: u.Host,
		post: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: cfg.Concurrency, MaxConnsPerHost: cfg.Concurrency}},
		arrivals: map[string]time.Time{},
		changed:  make(chan struct{}, 1),
	}
	defer r.post.CloseIdleConnections()
	for i := range cfg.Streams {
		user := fmt.Sprintf("push-%s-u%d", runID, i)
		tok, err := token.Sign(cfg.Secret, cfg.Shop, user, nil, 2*time.Hour)
		if err != nil {
			return nil, fmt.Errorf("loadtest: push: token: %w", err)
		}
		r.clients = append(r.clients, &pushClient{user: user, token: tok, got: map[string]int{}})
	}
	defer r.closeAll()

	rep := &PushReport{Env: loadEnvironment(), Started: time.Now()}
	rep.Config.Streams, rep.Config.Replies, rep.Config.Storm, rep.Config.StormReplies =
		cfg.Streams, cfg.Replies, cfg.Storm, cfg.StormReplies
	log := cfg.Logger

	// 1. Every stream opens at once.
	rep.RSS.BaselineBytes = int64(r.metric(ctx, "process_resident_memory_bytes"))
	log.Info("opening streams", "streams", cfg.Streams)
	rep.Open = r.openWave(ctx, r.clients)
	if rep.RSS.BaselineBytes > 0 {
		rep.RSS.OpenBytes = int64(r.metric(ctx, "process_resident_memory_bytes"))
		rep.RSS.BytesPerStream = float64(rep.RSS.OpenBytes-rep.RSS.BaselineBytes) / float64(max(rep.Open.Opened, 1))
	}
	log.Info("streams open", "opened", rep.Open.Opened, "seconds", rep.Open.AllOpenSeconds)
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	// 2. Live delivery to open streams: the last Replies customers (not
	// the storm's first ones) ask a question each.
	cpu0, wire0, t0 := r.metric(ctx, "process_cpu_seconds_total"), r.wireBuckets(ctx), time.Now()
	live, failed := r.ask(ctx, r.clients[len(r.clients)-cfg.Replies:])
	rep.Live = r.await(ctx, live, failed)
	r.phase(ctx, &rep.Live, cpu0, wire0, t0)
	log.Info("live delivery", "delivered", rep.Live.Delivered, "p99_ms", rep.Live.Latency.P99)

	// 3. The storm drops, gets replies while away, and comes back at once
	// with Last-Event-ID.
	storm := r.clients[:cfg.Storm]
	for _, c := range storm {
		c.drop()
	}
	cpu0, wire0, t0 = r.metric(ctx, "process_cpu_seconds_total"), r.wireBuckets(ctx), time.Now()
	missed, failed := r.ask(ctx, storm[:cfg.StormReplies])
	log.Info("reconnect storm", "clients", len(storm))
	rep.Reconnect = r.openWave(ctx, storm)
	rep.StormDelivery = r.await(ctx, missed, failed)
	r.phase(ctx, &rep.StormDelivery, cpu0, wire0, t0)

	// Anything arriving twice shows up now or not at all: every reply is
	// committed, and the storm has replayed.
	rep.Duplicates = r.duplicates()
	return rep, ctx.Err()
}

// phase notes a delivery phase's length, the edge's CPU and its share of
// delivery over it, from cpu0, wire0 and t0 read at its start.
func (r *pushRun) phase(ctx context.Context, d *PushDelivery, cpu0 float64, wire0 []pushBucket, t0 time.Time) {
	d.Seconds = loadRound(time.Since(t0).Seconds())
	if cpu0 > 0 {
		d.EdgeCPUSeconds = loadRound(r.metric(ctx, "process_cpu_seconds_total") - cpu0)
	}
	wire := r.wireBuckets(ctx)
	if len(wire) == 0 || len(wire) != len(wire0) {
		return
	}
	for i := range wire {
		wire[i].count -= wire0[i].count
	}
	total := wire[len(wire)-1].count // le="+Inf"
	atMost := func(q float64) float64 {
		for _, b := range wire {
			if float64(b.count) >= q*float64(total) {
				return b.le * 1000
			}
		}
		return math.Inf(1)
	}
	if total > 0 {
		d.EdgeWire.Events = int(total)
		d.EdgeWire.P50AtMost, d.EdgeWire.P99AtMost = atMost(0.5), atMost(0.99)
	}
}

// pushBucket is one cumulative bucket of a histogram on /metrics.
type pushBucket struct {
	le    float64
	count int64
}

// wireBuckets reads the edge's delivery histogram, stage wire (nil when it
// cannot).
func (r *pushRun) wireBuckets(ctx context.Context) []pushBucket {
	if r.cfg.MetricsURL == "" {
		return nil
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", r.cfg.MetricsURL, nil)
	resp, err := r.post.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	const prefix = `peakdesk_ingest_reply_delivery_seconds_bucket{stage="wire",le="`
	var out []pushBucket
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		le, count, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		l, err1 := strconv.ParseFloat(le, 64)
		c, err2 := strconv.ParseFloat(count, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, pushBucket{le: l, count: int64(c)})
	}
	return out
}

// metric reads an unlabelled metric of the edge (its process's resident
// memory, its CPU seconds), 0 when it cannot.
func (r *pushRun) metric(ctx context.Context, name string) float64 {
	if r.cfg.MetricsURL == "" {
		return 0
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", r.cfg.MetricsURL, nil)
	resp, err := r.post.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// openWave opens the streams of clients all at once, each retrying after
// Retry-After when refused, until the phase deadline.
func (r *pushRun) openWave(ctx context.Context, clients []*pushClient) PushOpens {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Deadline)
	defer cancel()
	out := PushOpens{Attempted: len(clients), Errors: map[string]int{}}
	h := loadNewHist()
	var mu sync.Mutex
	var opened, retried atomic.Int64
	var last time.Duration
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for {
				t0 := time.Now()
				retryAfter, err := r.open(ctx, c)
				if err == nil {
					opened.Add(1)
					mu.Lock()
					loadRecord(h, time.Since(t0))
					last = max(last, time.Since(start))
					mu.Unlock()
					return
				}
				mu.Lock()
				out.Errors[pushErrorKind(err)]++
				mu.Unlock()
				if retryAfter <= 0 || ctx.Err() != nil {
					r.cfg.Logger.Warn("stream open failed", "err", err)
					return
				}
				retried.Add(1)
				select {
				case <-time.After(retryAfter):
				case <-ctx.Done():
					return
				}
			}
		})
	}
	wg.Wait()
	out.Opened, out.Retried = int(opened.Load()), int(retried.Load())
	out.AllOpenSeconds = loadRound(last.Seconds())
	out.Latency = loadPercentilesOf(h)
	return out
}

// open opens c's stream with its Last-Event-ID and starts its reader. A
// refusal with Retry-After returns how long to wait.
func (r *pushRun) open(ctx context.Context, c *pushClient) (retryAfter time.Duration, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.host)
	if err != nil {
		return pushPause(), err // the listener's backlog overflowed: try again
	}
	c.mu.Lock()
	last := c.lastID
	c.mu.Unlock()
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET /v1/events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n", r.host, c.token)
	if last != "" {
		fmt.Fprintf(&req, "Last-Event-ID: %s\r\n", last)
	}
	req.WriteString("\r\n")
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := conn.Write(req.Bytes()); err != nil {
		conn.Close()
		return pushPause(), err
	}
	br := bufio.NewReaderSize(conn, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return pushPause(), err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		wait := time.Duration(0)
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil &&
			(resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
			wait = time.Duration(s) * time.Second
		}
		return wait, fmt.Errorf("GET /v1/events: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	r.readers.Go(func() { r.read(c, conn, resp.Body) })
	return 0, nil
}

// pushPause is how long a client waits before it tries again after a
// failed connection: 0.1 to 1 s, so retries do not come back as one wave.
func pushPause() time.Duration { return 100*time.Millisecond + mrand.N(900*time.Millisecond) }

// pushErrorKind names the kind of a failed open for the report.
func pushErrorKind(err error) string {
	s := err.Error()
	switch {
	case strings.HasPrefix(s, "GET /v1/events: "):
		return "http " + strings.Fields(s)[2]
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return "closed before the response"
	case strings.Contains(s, "timeout"):
		return "timeout"
	case strings.Contains(s, "refused"):
		return "refused"
	case strings.Contains(s, "reset"):
		return "reset"
	}
	return "other"
}

// read follows one connection of c until it ends.
func (r *pushRun) read(c *pushClient, conn net.Conn, body io.Reader) {
	defer conn.Close()
	rd := sse.NewReader(body)
	for {
		ev, err := rd.Next()
		if err != nil {
			return
		}
		if ev.Type != "reply" {
			continue
		}
		now := time.Now()
		var reply struct {
			ID string `json:"reply_id"`
		}
		if json.Unmarshal([]byte(ev.Data), &reply) != nil {
			continue
		}
		c.mu.Lock()
		c.got[reply.ID]++
		if ev.ID != "" {
			c.lastID = ev.ID
		}
		c.mu.Unlock()
		r.mu.Lock()
		if _, ok := r.arrivals[reply.ID]; !ok {
			r.arrivals[reply.ID] = now
		}
		r.mu.Unlock()
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

// drop closes c's connection (a network blip), keeping its last event id.
func (c *pushClient) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (r *pushRun) closeAll() {
	for _, c := range r.clients {
		c.drop()
	}
	r.readers.Wait()
}

// pushReply is a reply the run expects on a client's stream.
type pushReply struct {
	client *pushClient
	id     string
	// asked is when the question was sent, createdAt when the reply's row
	// was written.
	asked, createdAt time.Time
}

// ask has each of clients ask one question, answered within the request
// (?wait=): when it returns, every reply is committed and published. It
// returns the replies and how many questions failed.
func (r *pushRun) ask(ctx context.Context, clients []*pushClient) ([]pushReply, int) {
	sem := make(chan struct{}, r.cfg.Concurrency)
	var mu sync.Mutex
	var out []pushReply
	failed := 0
	var wg sync.WaitGroup
	for i, c := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			reply, err := r.question(ctx, c, i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				r.cfg.Logger.Warn("question failed", "err", err)
				return
			}
			out = append(out, reply)
		})
	}
	wg.Wait()
	return out, failed
}

// question posts one question of c and returns its reply.
func (r *pushRun) question(ctx context.Context, c *pushClient, i int) (pushReply, error) {
	body, _ := json.Marshal(map[string]string{"text": pushQuestions[i%len(pushQuestions)]})
	req, _ := http.NewRequestWithContext(ctx, "POST", r.base+"/v1/messages?wait=10s", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	asked := time.Now()
	resp, err := r.post.Do(req)
	if err != nil {
		return pushReply{}, err
	}
	defer resp.Body.Close()
	var res struct {
		Status string          `json:"status"`
		Reply  *peakdesk.Reply `json:"reply"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return pushReply{}, fmt.Errorf("POST /v1/messages: %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || res.Reply == nil {
		return pushReply{}, fmt.Errorf("POST /v1/messages: %d, status %q: not answered within the request", resp.StatusCode, res.Status)
	}
	return pushReply{client: c, id: res.Reply.ID, asked: asked, createdAt: res.Reply.CreatedAt}, nil
}

// pushQuestions are answered by the simulated LLM (or the FAQ) at once.
var pushQuestions = []string{"双11满减怎么算？", "How long does shipping take?", "有什么优惠券？", "Can I change my address?"}

// await waits until every one of replies has arrived on its client's
// stream, or the phase deadline passes, and measures write→arrival and
// question→arrival.
func (r *pushRun) await(ctx context.Context, replies []pushReply, failed int) PushDelivery {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Deadline)
	defer cancel()
	d := PushDelivery{Replies: len(replies) + failed, Failed: failed}
	for {
		r.mu.Lock()
		n := 0
		for _, p := range replies {
			if _, ok := r.arrivals[p.id]; ok {
				n++
			}
		}
		r.mu.Unlock()
		if n == len(replies) {
			break
		}
		select {
		case <-r.changed:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	h, hq := loadNewHist(), loadNewHist()
	r.mu.Lock()
	for _, p := range replies {
		at, ok := r.arrivals[p.id]
		if !ok {
			d.Lost++
			continue
		}
		d.Delivered++
		loadRecord(h, max(at.Sub(p.createdAt), 0))
		loadRecord(hq, max(at.Sub(p.asked), 0))
	}
	r.mu.Unlock()
	d.Latency, d.FromQuestion = loadPercentilesOf(h), loadPercentilesOf(hq)
	return d
}

// duplicates counts replies some client received more than once.
func (r *pushRun) duplicates() int {
	n := 0
	for _, c := range r.clients {
		c.mu.Lock()
		for _, k := range c.got {
			if k > 1 {
				n++
			}
		}
		c.mu.Unlock()
	}
	return n
}
