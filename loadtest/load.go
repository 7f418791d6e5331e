// Package loadtest offers load to any peakdesk URL — steady, burst and ramp
// scenarios with a priority and question mix — follows every accepted
// message to its answer (SSE or polling) and reports what was lost, failed
// or answered twice, with latency percentiles, as text, JSON and HTML. The
// simulated LLM and shop API it is used with live in llmsim and shopsim.
package loadtest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
)

// Scenario names the shape of the offered load.
type Scenario string

// Scenarios.
const (
	// ScenarioSteady offers Rate messages per second for Duration.
	ScenarioSteady Scenario = "steady"
	// ScenarioBurst offers Messages messages spread evenly within Within,
	// like the midnight rush of Double 11.
	ScenarioBurst Scenario = "burst"
	// ScenarioRamp offers a rate rising linearly from Rate to RateEnd over
	// Duration.
	ScenarioRamp Scenario = "ramp"
)

// LoadFollow names how the load generator learns that a message was answered.
type LoadFollow string

// Follow modes.
const (
	// LoadFollowSSE opens one event stream per conversation.
	LoadFollowSSE LoadFollow = "sse"
	// LoadFollowPoll polls GET /v1/messages/{id} with backoff.
	LoadFollowPoll LoadFollow = "poll"
)

// loadMaxMessages keeps a mistyped rate from allocating a schedule that
// cannot be offered anyway.
const loadMaxMessages = 10_000_000

// LoadConfig configures one load test run. Zero fields take the defaults
// named in their comments.
type LoadConfig struct {
	// BaseURL is the peakdesk ingest edge, e.g. "http://127.0.0.1:8080".
	// Required.
	BaseURL string
	// Secret signs the per-user tokens; it must be the target's
	// PEAKDESK_JWT_SECRET. Required.
	Secret []byte
	// Shop is the tenant the tokens name. Default "demo".
	Shop string
	// Scenario is the load shape. Default steady.
	Scenario Scenario
	// Rate is the offered messages per second for steady and the start rate
	// for ramp. Default 100.
	Rate float64
	// RateEnd is the rate ramp ends at. Default 5 × Rate.
	RateEnd float64
	// Duration is how long steady and ramp offer load. Default 10 s.
	Duration time.Duration
	// Messages is how many messages burst offers. Default 1000.
	Messages int
	// Within is the window burst spreads its messages over. Default 5 s.
	Within time.Duration
	// Concurrency caps in-flight POST requests; poll requests have a cap of
	// the same size of their own. An offer that finds the cap full waits
	// for a slot (and is counted as delayed); it is never dropped.
	// Default 256.
	Concurrency int
	// Conversations is how many conversations (one user each) the messages
	// are spread over at random. Default 100.
	Conversations int
	// Mix weights the priority hint sent with each message. The zero value
	// sends no hint (the server classifies).
	Mix LoadMix
	// Follow is how answers are observed. Default sse.
	Follow LoadFollow
	// Deadline is how long after the last offer completes the run waits
	// for answers; messages still unanswered then are lost. Default 60 s.
	Deadline time.Duration
	// Linger is how long SSE streams stay open after every accepted message
	// was answered, to catch late duplicate replies. Default 1 s.
	Linger time.Duration
	// RequestTimeout bounds one POST or GET (not an event stream).
	// Default 30 s.
	RequestTimeout time.Duration
	// Seed makes the questions, hints and conversation choice repeatable.
	// Client message ids are unique per run regardless.
	Seed int64
	// Logger receives progress lines. Default: discard.
	Logger *slog.Logger
}

func (c *LoadConfig) setDefaults() {
	c.Shop = cmp.Or(c.Shop, "demo")
	c.Scenario = cmp.Or(c.Scenario, ScenarioSteady)
	c.Rate = cmp.Or(c.Rate, 100)
	c.RateEnd = cmp.Or(c.RateEnd, 5*c.Rate)
	c.Duration = cmp.Or(c.Duration, 10*time.Second)
	c.Messages = cmp.Or(c.Messages, 1000)
	c.Within = cmp.Or(c.Within, 5*time.Second)
	c.Concurrency = cmp.Or(c.Concurrency, 256)
	c.Conversations = cmp.Or(c.Conversations, 100)
	if c.Mix == (LoadMix{}) {
		c.Mix = LoadMix{None: 1}
	}
	c.Follow = cmp.Or(c.Follow, LoadFollowSSE)
	c.Deadline = cmp.Or(c.Deadline, 60*time.Second)
	c.Linger = cmp.Or(c.Linger, time.Second)
	c.RequestTimeout = cmp.Or(c.RequestTimeout, 30*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *LoadConfig) validate() error {
	u, err := url.Parse(c.BaseURL)
	switch {
	case c.BaseURL == "":
		return errors.New("load config: BaseURL is required")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("load config: BaseURL %q is not an http(s) URL", c.BaseURL)
	case len(c.Secret) == 0:
		return errors.New("load config: Secret is required")
	case c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0):
		return fmt.Errorf("load config: Rate %v must be positive", c.Rate)
	case c.RateEnd < 0 || math.IsNaN(c.RateEnd) || math.IsInf(c.RateEnd, 0):
		return fmt.Errorf("load config: RateEnd %v must be positive", c.RateEnd)
	case c.Duration < 0:
		return fmt.Errorf("load config: Duration %v must be positive", c.Duration)
	case c.Messages < 0:
		return fmt.Errorf("load config: Messages %d must be positive", c.Messages)
	case c.Within < 0:
		return fmt.Errorf("load config: Within %v must be positive", c.Within)
	case c.Concurrency < 1:
		return fmt.Errorf("load config: Concurrency %d must be at least 1", c.Concurrency)
	case c.Conversations < 1:
		return fmt.Errorf("load config: Conversations %d must be at least 1", c.Conversations)
	case c.Deadline < 0:
		return fmt.Errorf("load config: Deadline %v must be positive", c.Deadline)
	case c.Linger < 0:
		return fmt.Errorf("load config: Linger %v must be positive", c.Linger)
	case c.RequestTimeout < 0:
		return fmt.Errorf("load config: RequestTimeout %v must be positive", c.RequestTimeout)
	}
	if err := c.Mix.validate(); err != nil {
		return fmt.Errorf("load config: Mix: %w", err)
	}
	switch c.Follow {
	case LoadFollowSSE, LoadFollowPoll:
	default:
		return fmt.Errorf("load config: Follow %q must be sse or poll", c.Follow)
	}
	switch c.Scenario {
	case ScenarioSteady, ScenarioBurst, ScenarioRamp:
	default:
		return fmt.Errorf("load config: Scenario %q must be steady, burst or ramp", c.Scenario)
	}
	if n := loadCount(*c); n < 1 || n > loadMaxMessages {
		return fmt.Errorf("load config: Scenario %s yields %d messages; want 1..%d", c.Scenario, n, loadMaxMessages)
	}
	return nil
}

// LoadMix weights the priority hint of offered messages. None means no hint:
// the server classifies the text.
type LoadMix struct {
	P0   float64 `json:"p0"`
	P1   float64 `json:"p1"`
	P2   float64 `json:"p2"`
	None float64 `json:"none"`
}

// ParseLoadMix parses a mix like "p0=1,p1=3,p2=6" or "none" (a bare name
// weighs 1; "none=2,p0=1" mixes hinted and unhinted messages).
func ParseLoadMix(s string) (LoadMix, error) {
	var m LoadMix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, hasVal := strings.Cut(part, "=")
		w := 1.0
		if hasVal {
			f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
				return LoadMix{}, fmt.Errorf("parse load mix: weight %q of %s is not a non-negative number", val, name)
			}
			w = f
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "p0":
			m.P0 = w
		case "p1":
			m.P1 = w
		case "p2":
			m.P2 = w
		case "none":
			m.None = w
		default:
			return LoadMix{}, fmt.Errorf("parse load mix: unknown priority %q (want p0, p1, p2 or none)", name)
		}
	}
	if err := m.validate(); err != nil {
		return LoadMix{}, fmt.Errorf("parse load mix: %w", err)
	}
	return m, nil
}

// String formats m the way ParseLoadMix reads it.
func (m LoadMix) String() string {
	var parts []string
	for _, p := range []struct {
		name string
		w    float64
	}{{"p0", m.P0}, {"p1", m.P1}, {"p2", m.P2}, {"none", m.None}} {
		if p.w > 0 {
			parts = append(parts, p.name+"="+strconv.FormatFloat(p.w, 'g', -1, 64))
		}
	}
	return strings.Join(parts, ",")
}

func (m LoadMix) validate() error {
	for _, w := range []float64{m.P0, m.P1, m.P2, m.None} {
		if w < 0 || math.IsNaN(w) || math.IsInf(w, 0) {
			return errors.New("weights must be non-negative numbers")
		}
	}
	if m.P0+m.P1+m.P2+m.None <= 0 {
		return errors.New("at least one weight must be positive")
	}
	return nil
}

// pick returns the hint for one message: "p0", "p1", "p2" or "" for none.
func (m LoadMix) pick(rng *mrand.Rand) string {
	x := rng.Float64() * (m.P0 + m.P1 + m.P2 + m.None)
	switch {
	case x < m.P0:
		return "p0"
	case x < m.P0+m.P1:
		return "p1"
	case x < m.P0+m.P1+m.P2:
		return "p2"
	}
	return ""
}

// loadCount is how many messages the scenario offers.
func loadCount(c LoadConfig) int {
	switch c.Scenario {
	case ScenarioSteady:
		return int(math.Round(c.Rate * c.Duration.Seconds()))
	case ScenarioBurst:
		return c.Messages
	case ScenarioRamp:
		return int(math.Round((c.Rate + c.RateEnd) / 2 * c.Duration.Seconds()))
	}
	return 0
}

// loadSchedule returns when each message is offered, as offsets from the
// start of the run, in ascending order.
func loadSchedule(c LoadConfig) []time.Duration {
	n := loadCount(c)
	at := make([]time.Duration, n)
	switch c.Scenario {
	case ScenarioSteady:
		for i := range at {
			at[i] = time.Duration(float64(i) / c.Rate * float64(time.Second))
		}
	case ScenarioBurst:
		for i := range at {
			at[i] = time.Duration(float64(i) * float64(c.Within) / float64(n))
		}
	case ScenarioRamp:
		// The rate r(t) = r0 + (r1-r0)·t/D offers C(t) = r0·t + a·t² messages
		// by time t, with a = (r1-r0)/(2D). Message i goes out when C(t) = i;
		// 2i/(r0+√(r0²+4ai)) is the root of that quadratic that stays exact
		// for a near zero and for falling ramps.
		d := c.Duration.Seconds()
		a := (c.RateEnd - c.Rate) / (2 * d)
		b := c.Rate
		for i := range at {
			if i == 0 {
				continue
			}
			disc := max(b*b+4*a*float64(i), 0)
			t := 2 * float64(i) / (b + math.Sqrt(disc))
			at[i] = time.Duration(min(t, d) * float64(time.Second))
		}
	}
	return at
}

// loadOutcome is what the POST of one offer came to.
type loadOutcome int

const (
	loadNotSent loadOutcome = iota
	loadAccepted
	loadRateLimited
	loadOverloaded
	loadFailed
)

// loadOffer is one offered message from schedule to answer. The offer
// goroutine owns the request fields; the answer fields are guarded by
// loadRun.mu. The report reads both after every goroutine has finished.
type loadOffer struct {
	idx      int
	at       time.Duration // offset of the due time from the start
	due      time.Time
	conv     int
	hint     string
	kind     string
	text     string
	clientID string

	sentAt    time.Time
	doneAt    time.Time
	outcome   loadOutcome
	errKey    string
	messageID string
	priority  string
	onPost    bool   // answered by the POST itself (200 answered)
	postReply string // the reply id the POST answered with

	// Guarded by loadRun.mu.
	answeredAt time.Time
	source     string
	replyIDs   []string
	failed     bool
	stored     bool // the answer on POST seen stored (its event, or the conversation read back)
	missed     bool // found answered only by the final check, not by SSE
}

// loadConv is one conversation and the user who owns it. Its id is known
// after the first accepted message; messages that come while the first one
// is in flight wait for it, so they join the same conversation.
type loadConv struct {
	idx   int
	user  string
	token string

	mu       sync.Mutex
	id       string
	creating bool
	ready    chan struct{} // closed when the creating attempt ends
	followed bool
}

// join returns the conversation id to send, or "" with creator = true when
// the caller's message is to create the conversation; the caller must then
// call created exactly once.
func (c *loadConv) join(ctx context.Context) (id string, creator bool, err error) {
	for {
		c.mu.Lock()
		if c.id != "" {
			id := c.id
			c.mu.Unlock()
			return id, false, nil
		}
		if !c.creating {
			c.creating = true
			c.ready = make(chan struct{})
			c.mu.Unlock()
			return "", true, nil
		}
		ready := c.ready
		c.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return "", false, ctx.Err()
		}
	}
}

// created ends a creating attempt; id is "" when it failed, and then the
// next message tries again.
func (c *loadConv) created(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.id == "" {
		c.id = id
	}
	c.creating = false
	close(c.ready)
}

func (c *loadConv) conversationID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// loadObs is one observation of a reply answering a message.
type loadObs struct {
	replyID string
	source  string
	at      time.Time
	post    bool // the POST's own answer, not yet known to be stored
}

// loadRun is the state of one RunLoad call.
type loadRun struct {
	cfg    LoadConfig
	base   string
	post   *http.Client
	stream *http.Client
	runID  string
	start  time.Time
	// followEnd is when the run stopped following answers; the series
	// reaches it so that a backlog left at the deadline shows.
	followEnd time.Time
	convs     []*loadConv
	offers    []*loadOffer
	pollSem   chan struct{}

	follows   sync.WaitGroup
	followCtx context.Context

	offered atomic.Int64
	delayed int // written by the scheduler only

	mu           sync.Mutex
	byID         map[string]*loadOffer
	pending      map[string][]loadObs
	accepted     int
	answered     int
	changed      chan struct{} // signalled (non-blocking) when answered or storedOnPost grows
	onPost       int           // accepted messages answered on their POST
	storedOnPost int           // of those, seen stored
	redeliveries int
	reconnects   int
	auditErrors  int
	errSamples   []string
}

// RunLoad offers load to the peakdesk edge at cfg.BaseURL, follows every
// accepted message to its answer or the deadline, and reports what happened.
// It returns an error for a bad config or when ctx ends the run early; in
// the latter case the partial report is returned too. Lost or duplicate
// answers are findings in the report, not errors.
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("run load: %w", err)
	}
	r, err := loadNewRun(cfg)
	if err != nil {
		return nil, fmt.Errorf("run load: %w", err)
	}
	defer r.post.CloseIdleConnections()
	defer r.stream.CloseIdleConnections()

	followCtx, stopFollowing := context.WithCancel(ctx)
	defer stopFollowing()
	r.followCtx = followCtx

	progressDone := make(chan struct{})
	var progress sync.WaitGroup
	progress.Go(func() { r.logProgress(progressDone) })

	// Offer the messages on schedule; this returns once every POST is done.
	r.start = time.Now()
	lastOffer := r.offerAll(ctx)

	// Wait for the answers, at most Deadline after the last offer.
	followEnd := r.awaitAnswers(ctx, lastOffer.Add(cfg.Deadline))
	if cfg.Follow == LoadFollowSSE && ctx.Err() == nil {
		r.linger(ctx)
	}
	r.followEnd = time.Now()
	stopFollowing()
	r.follows.Wait()

	// Final checks use their own short-lived context: the run's follow
	// context is over, but the caller's may still allow them.
	if ctx.Err() == nil {
		switch cfg.Follow {
		case LoadFollowSSE:
			r.checkUnanswered(ctx, followEnd)
			r.auditConversations(ctx, r.unstoredConvs())
		case LoadFollowPoll:
			r.auditConversations(ctx, nil)
		}
	}
	close(progressDone)
	progress.Wait()

	rep := r.report(time.Now())
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("run load: interrupted: %w", err)
	}
	return rep, nil
}

func loadNewRun(cfg LoadConfig) (*loadRun, error) {
	var idb [6]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, fmt.Errorf("run id: %w", err)
	}
	r := &loadRun{
		cfg:     cfg,
		base:    strings.TrimRight(cfg.BaseURL, "/"),
		runID:   hex.EncodeToString(idb[:]),
		pollSem: make(chan struct{}, cfg.Concurrency),
		byID:    make(map[string]*loadOffer),
		pending: make(map[string][]loadObs),
		changed: make(chan struct{}, 1),
	}
	r.post, r.stream = loadClients(cfg)

	// One user per conversation; tokens outlive the whole run.
	sched := loadSchedule(cfg)
	ttl := sched[len(sched)-1] + cfg.Deadline + cfg.Linger + time.Hour
	r.convs = make([]*loadConv, cfg.Conversations)
	for i := range r.convs {
		user := fmt.Sprintf("load-%s-u%d", r.runID, i)
		tok, err := token.Sign(cfg.Secret, cfg.Shop, user, []string{token.ScopeUrgent}, ttl)
		if err != nil {
			return nil, fmt.Errorf("token for %s: %w", user, err)
		}
		r.convs[i] = &loadConv{idx: i, user: user, token: tok}
	}

	// Everything random is drawn up front from the seed, so a seed repeats
	// the same questions, hints and conversation choices.
	rng := mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x9e3779b97f4a7c15))
	r.offers = make([]*loadOffer, len(sched))
	for i, at := range sched {
		q := loadNewQuestion(rng)
		r.offers[i] = &loadOffer{
			idx:      i,
			at:       at,
			conv:     rng.IntN(cfg.Conversations),
			hint:     cfg.Mix.pick(rng),
			kind:     q.kind,
			text:     q.text,
			clientID: fmt.Sprintf("load-%s-%d", r.runID, i),
		}
	}
	return r, nil
}

// loadClients returns the client for POSTs and polls (bounded by
// RequestTimeout, idle pool sized to the concurrency) and the client for
// event streams (no overall timeout; a stream lives as long as the run).
func loadClients(cfg LoadConfig) (post, stream *http.Client) {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	postTr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		MaxIdleConns:          2 * cfg.Concurrency,
		MaxIdleConnsPerHost:   2 * cfg.Concurrency, // posts and polls
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		ExpectContinueTimeout: time.Second,
	}
	streamTr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: cfg.Conversations,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		// Compression would buffer events in the gzip reader.
		DisableCompression: true,
	}
	return &http.Client{Transport: postTr, Timeout: cfg.RequestTimeout},
		&http.Client{Transport: streamTr}
}

// offerAll sends every offer at its due time, waiting for a free slot when
// Concurrency requests are in flight. It returns when every POST is done,
// with the time the last one finished.
func (r *loadRun) offerAll(ctx context.Context) time.Time {
	sem := make(chan struct{}, r.cfg.Concurrency)
	var posts sync.WaitGroup

schedule:
	for _, o := range r.offers {
		o.due = r.start.Add(o.at)
		if d := time.Until(o.due); d > 0 && peakdesk.Sleep(ctx, d) != nil {
			break schedule
		}
		select {
		case sem <- struct{}{}:
		default:
			r.delayed++
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				break schedule
			}
		}
		posts.Go(func() {
			defer func() { <-sem }()
			r.offer(ctx, o)
		})
	}
	posts.Wait()
	return time.Now()
}

// loadPostResponse is the body of a 200 or 202 answer to POST /v1/messages.
type loadPostResponse struct {
	MessageID      string     `json:"message_id"`
	ConversationID string     `json:"conversation_id"`
	Priority       string     `json:"priority"`
	Status         string     `json:"status"`
	Reply          *loadReply `json:"reply"`
}

// loadReply is the part of a reply the load generator reads.
type loadReply struct {
	ID             string    `json:"reply_id"`
	ConversationID string    `json:"conversation_id"`
	MessageIDs     []string  `json:"message_ids"`
	Source         string    `json:"source"`
	CreatedAt      time.Time `json:"created_at"`
}

// loadErrorBody is the edge's error envelope.
type loadErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// offer posts one message and records the outcome; an accepted message is
// handed to the follow mode.
func (r *loadRun) offer(ctx context.Context, o *loadOffer) {
	conv := r.convs[o.conv]
	convID, creator, err := conv.join(ctx)
	if err != nil {
		return // the run was interrupted before this offer went out
	}
	newID := ""
	if creator {
		defer func() { conv.created(newID) }()
	}

	body := map[string]string{"text": o.text, "client_msg_id": o.clientID}
	if convID != "" {
		body["conversation_id"] = convID
	}
	if o.hint != "" {
		body["priority"] = o.hint
	}
	o.sentAt = time.Now()
	r.offered.Add(1)
	var resp loadPostResponse
	status, errBody, err := r.do(ctx, http.MethodPost, "/v1/messages", conv.token, body, &resp)
	o.doneAt = time.Now()

	switch {
	case err != nil:
		o.outcome, o.errKey = loadFailed, loadTransportKey(ctx, err)
		r.sample(fmt.Sprintf("POST %s: %v", o.clientID, err))
	case status == http.StatusTooManyRequests && errBody.Error.Code == "rate_limited":
		o.outcome = loadRateLimited
	case status == http.StatusServiceUnavailable && errBody.Error.Code == "overloaded":
		o.outcome = loadOverloaded
	case status != http.StatusOK && status != http.StatusAccepted:
		o.outcome, o.errKey = loadFailed, strings.TrimSpace(fmt.Sprintf("%d %s", status, errBody.Error.Code))
		r.sample(fmt.Sprintf("POST %s: %d %s: %s", o.clientID, status, errBody.Error.Code, errBody.Error.Message))
	case resp.MessageID == "" && (resp.Reply == nil || len(resp.Reply.MessageIDs) == 0):
		o.outcome, o.errKey = loadFailed, fmt.Sprintf("%d without message_id", status)
		r.sample(fmt.Sprintf("POST %s: %d without message_id", o.clientID, status))
	default:
		o.outcome = loadAccepted
		o.messageID = resp.MessageID
		if o.messageID == "" {
			o.messageID = resp.Reply.MessageIDs[0]
		}
		o.priority = cmp.Or(resp.Priority, o.hint, "unknown")
		newID = resp.ConversationID
		if newID == "" && resp.Reply != nil {
			newID = resp.Reply.ConversationID
		}
		answered := resp.Status == "answered" && resp.Reply != nil && resp.Reply.ID != ""
		o.onPost = answered
		if answered {
			o.postReply = resp.Reply.ID
		}
		r.register(o)
		if answered {
			r.observe([]string{o.messageID}, loadObs{replyID: resp.Reply.ID, source: resp.Reply.Source, at: o.doneAt, post: true})
		}
		r.follow(conv, cmp.Or(newID, convID), o, answered)
	}
}

// loadTransportKey names a request that got no HTTP answer.
func loadTransportKey(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return "canceled"
	case errors.Is(err, errLoadBadBody):
		return "bad response"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed"
	default:
		return "transport"
	}
}

// sample keeps the first few error descriptions for the report.
func (r *loadRun) sample(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errSamples) < 10 {
		r.errSamples = append(r.errSamples, s)
	}
}

// register records an accepted message and applies any reply that arrived
// for it before the POST's answer did.
func (r *loadRun) register(o *loadOffer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.accepted++
	if o.onPost {
		r.onPost++
	}
	r.byID[o.messageID] = o
	obs := r.pending[o.messageID]
	delete(r.pending, o.messageID)
	for _, ob := range obs {
		r.applyLocked(o, ob)
	}
}

// observe records that a reply answers the given messages.
func (r *loadRun) observe(messageIDs []string, ob loadObs) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range messageIDs {
		if o := r.byID[id]; o != nil {
			r.applyLocked(o, ob)
		} else {
			r.pending[id] = append(r.pending[id], ob)
		}
	}
}

func (r *loadRun) applyLocked(o *loadOffer, ob loadObs) {
	if !ob.post && o.postReply != "" && ob.replyID == o.postReply && !o.stored {
		// The answer the edge gave on the POST (a shed message answered
		// from the FAQ), now seen stored: its event is published, and the
		// conversation lists it, only once it is committed.
		r.markStoredLocked(o)
		if slices.Contains(o.replyIDs, ob.replyID) {
			return
		}
	}
	if slices.Contains(o.replyIDs, ob.replyID) {
		r.redeliveries++
		return
	}
	o.replyIDs = append(o.replyIDs, ob.replyID)
	if o.answeredAt.IsZero() {
		o.answeredAt = ob.at
		o.source = cmp.Or(ob.source, "unknown")
		r.answered++
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

// markStoredLocked records that o's answer on POST is stored.
func (r *loadRun) markStoredLocked(o *loadOffer) {
	o.stored = true
	r.storedOnPost++
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// awaitAnswers waits until every accepted message is answered and every
// answer given on a POST is seen stored, the deadline
// passes or ctx ends, and returns when it stopped waiting.
func (r *loadRun) awaitAnswers(ctx context.Context, deadline time.Time) time.Time {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		r.mu.Lock()
		done := r.answered >= r.accepted && r.storedOnPost >= r.onPost
		r.mu.Unlock()
		if done {
			return time.Now()
		}
		select {
		case <-r.changed:
		case <-timer.C:
			return time.Now()
		case <-ctx.Done():
			return time.Now()
		}
	}
}

// linger keeps the event streams open a little longer so that a second,
// distinct reply to an answered message is still seen.
func (r *loadRun) linger(ctx context.Context) {
	_ = peakdesk.Sleep(ctx, r.cfg.Linger)
}

// logProgress logs the counts every few seconds until done is closed.
func (r *loadRun) logProgress(done <-chan struct{}) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			r.mu.Lock()
			acc, ans := r.accepted, r.answered
			r.mu.Unlock()
			r.cfg.Logger.Info("load progress",
				"elapsed", time.Since(r.start).Round(time.Second).String(),
				"offered", r.offered.Load(), "total", len(r.offers),
				"accepted", acc, "answered", ans, "backlog", acc-ans)
		}
	}
}
