package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk/ingest/token"
)

var loadTestSecret = []byte("load-test-secret")

// loadFakeKnobs choose how the fake edge misbehaves. Message knobs name the
// POST by its arrival number (1-based), so expected counts are exact.
type loadFakeKnobs struct {
	answerDelay time.Duration // for every answer
	reject      func(n int) int
	instant     func(n int) bool // 200 answered on POST (source faq)
	unstored    int              // answered on POST, but the answer is never stored (no event)
	never       int              // never answered
	double      int              // answered by two distinct replies
	redeliver   int              // its reply event is sent twice
	late        int              // answered after lateBy
	lateBy      time.Duration
	dropOnce    bool          // the first stream that delivered an event drops
	postDelay   time.Duration // each POST takes this long
	onPost      func(n int)   // called with each POST's number, under the fake's lock
}

// loadFake is a small in-memory stand-in for the ingest edge's HTTP contract.
type loadFake struct {
	t     *testing.T
	k     loadFakeKnobs
	auth  *token.Authenticator
	srv   *httptest.Server
	clock sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	posts     int
	inFlight  int
	maxFlight int
	clientIDs map[string]bool
	msgs      map[string]*loadFakeMsg
	convs     map[string]*loadFakeConv
	dropped   bool
	resumed   int // stream connections that carried Last-Event-ID
}

type loadFakeMsg struct {
	conv, prio string
	reply      *loadFakeReply
}

type loadFakeReply struct {
	ID             string   `json:"reply_id"`
	ConversationID string   `json:"conversation_id"`
	MessageIDs     []string `json:"message_ids"`
	Text           string   `json:"text"`
	Source         string   `json:"source"`
	CreatedAt      string   `json:"created_at"`
}

type loadFakeConv struct {
	user    string
	events  []loadFakeReply // event id = index + 1
	changed chan struct{}
}

func loadSetupFake(t *testing.T, k loadFakeKnobs) *loadFake {
	t.Helper()
	f := &loadFake{
		t: t, k: k,
		auth:      token.NewAuthenticator(loadTestSecret),
		clientIDs: map[string]bool{},
		msgs:      map[string]*loadFakeMsg{},
		convs:     map[string]*loadFakeConv{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/messages", f.post)
	mux.HandleFunc("GET /v1/messages/{id}", f.getMessage)
	mux.HandleFunc("GET /v1/conversations/{id}", f.getConversation)
	mux.HandleFunc("GET /v1/conversations/{id}/events", f.events)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		f.srv.Close()
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()
		f.clock.Wait()
	})
	return f
}

func loadFakeError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	if status == 429 || status == 503 {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":"fake says %s"}}`, code, code)
}

func loadFakeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *loadFake) post(w http.ResponseWriter, r *http.Request) {
	claims, err := f.auth.Authenticate(r)
	if err != nil {
		loadFakeError(w, 401, "unauthenticated")
		return
	}
	var in struct {
		ConversationID string `json:"conversation_id"`
		Text           string `json:"text"`
		Priority       string `json:"priority"`
		ClientMsgID    string `json:"client_msg_id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || strings.TrimSpace(in.Text) == "" {
		loadFakeError(w, 400, "invalid_argument")
		return
	}
	if in.Priority == "p0" && !claims.HasScope(token.ScopeUrgent) {
		loadFakeError(w, 403, "permission_denied")
		return
	}

	f.mu.Lock()
	f.inFlight++
	f.maxFlight = max(f.maxFlight, f.inFlight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	if f.k.postDelay > 0 {
		select {
		case <-time.After(f.k.postDelay):
		case <-r.Context().Done():
			return
		}
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if in.ClientMsgID == "" || f.clientIDs[in.ClientMsgID] {
		f.t.Errorf("client_msg_id %q missing or repeated", in.ClientMsgID)
	}
	f.clientIDs[in.ClientMsgID] = true
	f.posts++
	n := f.posts
	if f.k.onPost != nil {
		f.k.onPost(n)
	}
	if f.k.reject != nil {
		switch f.k.reject(n) {
		case 429:
			loadFakeError(w, 429, "rate_limited")
			return
		case 503:
			loadFakeError(w, 503, "overloaded")
			return
		}
	}
	convID := in.ConversationID
	if convID == "" {
		convID = fmt.Sprintf("%032x", len(f.convs)+1)
		f.convs[convID] = &loadFakeConv{user: claims.Subject, changed: make(chan struct{})}
	}
	conv := f.convs[convID]
	if conv == nil || conv.user != claims.Subject {
		loadFakeError(w, 404, "not_found")
		return
	}
	msgID := fmt.Sprintf("m%d", n)
	prio := in.Priority
	if prio == "" {
		prio = "p2"
	}
	f.msgs[msgID] = &loadFakeMsg{conv: convID, prio: prio}

	if n == f.k.unstored {
		// The edge's answer, which GET shows (from its cache), but which
		// is never stored: no event, not in the conversation.
		rep := loadFakeReply{ID: "r-" + msgID, ConversationID: convID, MessageIDs: []string{msgID},
			Text: "answer to " + msgID, Source: "faq", CreatedAt: time.Now().UTC().Format(time.RFC3339Nano)}
		f.msgs[msgID].reply = &rep
		loadFakeJSON(w, 200, map[string]any{"message_id": msgID, "conversation_id": convID, "priority": prio, "status": "answered", "reply": rep})
		return
	}
	if f.k.instant != nil && f.k.instant(n) {
		rep := f.answerLocked(msgID, "r-"+msgID, "faq")
		loadFakeJSON(w, 200, map[string]any{"message_id": msgID, "conversation_id": convID, "priority": prio, "status": "answered", "reply": rep})
		return
	}
	if n != f.k.never {
		delay := f.k.answerDelay
		if n == f.k.late {
			delay = f.k.lateBy
		}
		f.clock.Add(1)
		time.AfterFunc(delay, func() {
			defer f.clock.Done()
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.closed {
				return
			}
			f.answerLocked(msgID, "r-"+msgID, "llm")
			switch n {
			case f.k.double:
				f.answerLocked(msgID, "r2-"+msgID, "llm")
			case f.k.redeliver:
				conv.events = append(conv.events, conv.events[len(conv.events)-1])
			}
		})
	}
	loadFakeJSON(w, 202, map[string]any{"message_id": msgID, "conversation_id": convID, "priority": prio, "status": "queued"})
}

// answerLocked publishes a reply to the message's conversation.
func (f *loadFake) answerLocked(msgID, replyID, source string) loadFakeReply {
	m := f.msgs[msgID]
	rep := loadFakeReply{ID: replyID, ConversationID: m.conv, MessageIDs: []string{msgID},
		Text: "answer to " + msgID, Source: source, CreatedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if m.reply == nil {
		m.reply = &rep
	}
	c := f.convs[m.conv]
	c.events = append(c.events, rep)
	close(c.changed)
	c.changed = make(chan struct{})
	return rep
}

func (f *loadFake) getMessage(w http.ResponseWriter, r *http.Request) {
	claims, err := f.auth.Authenticate(r)
	if err != nil {
		loadFakeError(w, 401, "unauthenticated")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.PathValue("id")
	m := f.msgs[id]
	if m == nil || f.convs[m.conv].user != claims.Subject {
		loadFakeError(w, 404, "not_found")
		return
	}
	st := map[string]any{"message_id": id, "conversation_id": m.conv, "priority": m.prio, "status": "queued"}
	if m.reply != nil {
		st["status"], st["reply"] = "answered", m.reply
	}
	loadFakeJSON(w, 200, st)
}

func (f *loadFake) getConversation(w http.ResponseWriter, r *http.Request) {
	claims, err := f.auth.Authenticate(r)
	if err != nil {
		loadFakeError(w, 401, "unauthenticated")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.convs[r.PathValue("id")]
	if c == nil || c.user != claims.Subject {
		loadFakeError(w, 404, "not_found")
		return
	}
	replies := []loadFakeReply{}
	seen := map[string]bool{}
	for _, e := range c.events {
		if !seen[e.ID] {
			seen[e.ID] = true
			replies = append(replies, e)
		}
	}
	loadFakeJSON(w, 200, map[string]any{"conversation_id": r.PathValue("id"), "replies": replies})
}

func (f *loadFake) events(w http.ResponseWriter, r *http.Request) {
	claims, err := f.auth.Authenticate(r)
	if err != nil {
		loadFakeError(w, 401, "unauthenticated")
		return
	}
	f.mu.Lock()
	c := f.convs[r.PathValue("id")]
	if c == nil || c.user != claims.Subject {
		f.mu.Unlock()
		loadFakeError(w, 404, "not_found")
		return
	}
	last := 0
	if h := r.Header.Get("Last-Event-ID"); h != "" {
		last, _ = strconv.Atoi(h)
		f.resumed++
	}
	f.mu.Unlock()

	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	fl := w.(http.Flusher)
	fmt.Fprint(w, ": hello\n\n")
	fl.Flush()
	for {
		f.mu.Lock()
		evs := c.events[last:]
		changed := c.changed
		drop := len(evs) > 0 && f.k.dropOnce && !f.dropped
		if drop {
			f.dropped = true
		}
		f.mu.Unlock()
		for _, e := range evs {
			last++
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "event: reply\nid: %d\ndata: %s\n\n", last, b)
		}
		fl.Flush()
		if drop {
			return // the client must come back with Last-Event-ID
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

func (f *loadFake) config(c LoadConfig) LoadConfig {
	c.BaseURL = f.srv.URL
	c.Secret = loadTestSecret
	return c
}

// loadRejectEvery rejects POSTs n%25==0 with 429 and n%40==7 with 503; the
// two sets never meet.
func loadRejectEvery(n int) int {
	switch {
	case n%25 == 0:
		return 429
	case n%40 == 7:
		return 503
	}
	return 0
}

func loadCountIf(n int, f func(int) bool) int {
	c := 0
	for i := 1; i <= n; i++ {
		if f(i) {
			c++
		}
	}
	return c
}

func TestLoadFaults(t *testing.T) {
	t.Parallel()
	for _, follow := range []LoadFollow{LoadFollowSSE, LoadFollowPoll} {
		t.Run(string(follow), func(t *testing.T) {
			t.Parallel()
			instant := func(n int) bool { return n%50 == 1 }
			f := loadSetupFake(t, loadFakeKnobs{
				answerDelay: 20 * time.Millisecond,
				reject:      loadRejectEvery,
				instant:     instant,
				never:       10,
				double:      20,
				redeliver:   30,
				late:        40,
				lateBy:      600 * time.Millisecond,
				dropOnce:    true,
			})
			rep, err := RunLoad(t.Context(), f.config(LoadConfig{
				Scenario:      ScenarioSteady,
				Rate:          300,
				Duration:      time.Second,
				Concurrency:   32,
				Conversations: 20,
				Mix:           LoadMix{P0: 1, P1: 1, P2: 1, None: 1},
				Follow:        follow,
				Deadline:      1500 * time.Millisecond,
				Linger:        300 * time.Millisecond,
				Seed:          7,
			}))
			if err != nil {
				t.Fatalf("RunLoad: %v", err)
			}
			const offered = 300
			n429 := loadCountIf(offered, func(n int) bool { return loadRejectEvery(n) == 429 })
			n503 := loadCountIf(offered, func(n int) bool { return loadRejectEvery(n) == 503 })
			nFAQ := loadCountIf(offered, instant)
			accepted := offered - n429 - n503
			want := map[string]int{
				"offered":          offered,
				"accepted":         accepted,
				"answered":         accepted - 1,
				"answered_on_post": nFAQ,
				"rate_limited_429": n429,
				"overloaded_503":   n503,
				"errors":           0,
				"lost":             1,
				"duplicates":       1,
				"faq":              nFAQ,
				"llm":              accepted - 1 - nFAQ,
				"unmatched":        0,
				"sse_missed":       0,
			}
			got := map[string]int{
				"offered":          rep.Offered,
				"accepted":         rep.Accepted,
				"answered":         rep.Answered,
				"answered_on_post": rep.AnsweredOnPost,
				"rate_limited_429": rep.Rejected.RateLimited429,
				"overloaded_503":   rep.Rejected.Overloaded503,
				"errors":           loadSum(rep.Errors),
				"lost":             rep.Lost,
				"duplicates":       rep.Duplicates,
				"faq":              rep.Sources["faq"],
				"llm":              rep.Sources["llm"],
				"unmatched":        rep.UnmatchedReplies,
				"sse_missed":       rep.SSEMissed,
			}
			for k, w := range want {
				if got[k] != w {
					t.Errorf("%s = %d, want %d", k, got[k], w)
				}
			}
			if len(rep.LostSamples) != 1 || !strings.Contains(rep.LostSamples[0], "m10 ") {
				t.Errorf("lost samples = %q, want message m10", rep.LostSamples)
			}
			if len(rep.DuplicateSamples) != 1 || !strings.Contains(rep.DuplicateSamples[0], "m20 ") {
				t.Errorf("duplicate samples = %q, want message m20", rep.DuplicateSamples)
			}
			if err := rep.Check(); err == nil {
				t.Error("Check() = nil for a run with a lost and a duplicate answer")
			}
			if rep.Latency.ByPriority["all"].Answer.Count != int64(accepted-1) {
				t.Errorf("answer latency count = %d, want %d", rep.Latency.ByPriority["all"].Answer.Count, accepted-1)
			}
			if follow == LoadFollowSSE {
				f.mu.Lock()
				resumed := f.resumed
				f.mu.Unlock()
				if rep.SSEReconnects < 1 || resumed < 1 {
					t.Errorf("SSE reconnects = %d, resumed with Last-Event-ID = %d; want both ≥ 1", rep.SSEReconnects, resumed)
				}
				// The redelivered event and the SSE copies of the instant
				// answers carry reply ids already seen.
				if rep.Redeliveries < 1 {
					t.Errorf("redeliveries = %d, want ≥ 1", rep.Redeliveries)
				}
			}
			loadCheckSeries(t, rep)
		})
	}
}

// loadCheckSeries checks that the per-second series adds up to the totals.
func loadCheckSeries(t *testing.T, rep *LoadReport) {
	t.Helper()
	var off, acc, ans, rej, errs int
	for i, s := range rep.Series {
		if s.T != i {
			t.Fatalf("series[%d].t = %d", i, s.T)
		}
		off, acc, ans, rej, errs = off+s.Offered, acc+s.Accepted, ans+s.Answered, rej+s.Rejected, errs+s.Errors
		if s.Backlog != acc-ans {
			t.Errorf("series[%d].backlog = %d, want %d", i, s.Backlog, acc-ans)
		}
	}
	if off != rep.Offered || acc != rep.Accepted || ans != rep.Answered ||
		rej != rep.Rejected.RateLimited429+rep.Rejected.Overloaded503 || errs != loadSum(rep.Errors) {
		t.Errorf("series sums offered %d accepted %d answered %d rejected %d errors %d disagree with totals %+v",
			off, acc, ans, rej, errs, rep)
	}
}

func TestLoadScenarios(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  LoadConfig
		want int
	}{
		{"steady sse", LoadConfig{Scenario: ScenarioSteady, Rate: 200, Duration: time.Second}, 200},
		{"burst sse", LoadConfig{Scenario: ScenarioBurst, Messages: 250, Within: 500 * time.Millisecond}, 250},
		{"ramp sse", LoadConfig{Scenario: ScenarioRamp, Rate: 50, RateEnd: 350, Duration: time.Second}, 200},
		{"burst poll", LoadConfig{Scenario: ScenarioBurst, Messages: 150, Within: 300 * time.Millisecond, Follow: LoadFollowPoll}, 150},
		{"steady one conversation", LoadConfig{Scenario: ScenarioSteady, Rate: 100, Duration: time.Second, Conversations: 1}, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := loadSetupFake(t, loadFakeKnobs{answerDelay: 10 * time.Millisecond})
			cfg := f.config(tt.cfg)
			cfg.Linger = 50 * time.Millisecond
			cfg.Deadline = 10 * time.Second
			cfg.Conversations = max(cfg.Conversations, 30)
			if tt.cfg.Conversations == 1 {
				cfg.Conversations = 1
			}
			rep, err := RunLoad(t.Context(), cfg)
			if err != nil {
				t.Fatalf("RunLoad: %v", err)
			}
			if rep.Config.Planned != tt.want || rep.Offered != tt.want || rep.Accepted != tt.want || rep.Answered != tt.want {
				t.Errorf("planned %d offered %d accepted %d answered %d, want %d each",
					rep.Config.Planned, rep.Offered, rep.Accepted, rep.Answered, tt.want)
			}
			if rep.Lost != 0 || rep.Duplicates != 0 || loadSum(rep.Errors) != 0 || rep.UnmatchedReplies != 0 {
				t.Errorf("lost %d duplicates %d errors %v unmatched %d, want none", rep.Lost, rep.Duplicates, rep.Errors, rep.UnmatchedReplies)
			}
			if err := rep.Check(); err != nil {
				t.Errorf("Check() = %v", err)
			}
			f.mu.Lock()
			convs := len(f.convs)
			f.mu.Unlock()
			if convs > cfg.Conversations {
				t.Errorf("fake saw %d conversations, want at most %d (ids must be reused)", convs, cfg.Conversations)
			}
			loadCheckSeries(t, rep)
		})
	}
}

func TestLoadConcurrencyCap(t *testing.T) {
	t.Parallel()
	f := loadSetupFake(t, loadFakeKnobs{postDelay: 20 * time.Millisecond})
	rep, err := RunLoad(t.Context(), f.config(LoadConfig{
		Scenario:    ScenarioBurst,
		Messages:    40,
		Within:      10 * time.Millisecond,
		Concurrency: 2,
		Linger:      10 * time.Millisecond,
	}))
	if err != nil {
		t.Fatalf("RunLoad: %v", err)
	}
	f.mu.Lock()
	maxFlight := f.maxFlight
	f.mu.Unlock()
	if maxFlight > 2 {
		t.Errorf("fake saw %d POSTs at once, want at most 2", maxFlight)
	}
	if rep.Offered != 40 || rep.Answered != 40 {
		t.Errorf("offered %d answered %d, want 40 each: a full cap delays offers, never drops them", rep.Offered, rep.Answered)
	}
	if rep.DelayedByConcurrency == 0 {
		t.Error("delayed_by_concurrency = 0, want > 0 with 40 offers in 10 ms and a cap of 2")
	}
}

func TestLoadInterrupted(t *testing.T) {
	t.Parallel()
	fifth := make(chan struct{})
	f := loadSetupFake(t, loadFakeKnobs{onPost: func(n int) {
		if n == 5 {
			close(fifth)
		}
	}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cfg := f.config(LoadConfig{Scenario: ScenarioSteady, Rate: 100, Duration: time.Minute})
	done := make(chan struct{})
	var rep *LoadReport
	var err error
	go func() {
		defer close(done)
		rep, err = RunLoad(ctx, cfg)
	}()
	select {
	case <-fifth: // cancel once some messages went out
	case <-time.After(10 * time.Second):
		t.Fatal("no 5 POSTs within 10 s")
	}
	cancel()
	<-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RunLoad error = %v, want context.Canceled", err)
	}
	if rep == nil || rep.Offered < 5 || rep.Offered >= rep.Config.Planned {
		t.Fatalf("partial report %+v: want at least 5 offered and fewer than planned", rep)
	}
}

func TestLoadSchedule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  LoadConfig
		n    int
		last time.Duration // upper bound of the last offset
	}{
		{"steady", LoadConfig{Scenario: ScenarioSteady, Rate: 1000, Duration: 5 * time.Second}, 5000, 5 * time.Second},
		{"burst", LoadConfig{Scenario: ScenarioBurst, Messages: 100000, Within: 5 * time.Second}, 100000, 5 * time.Second},
		{"ramp up", LoadConfig{Scenario: ScenarioRamp, Rate: 10, RateEnd: 1000, Duration: 10 * time.Second}, 5050, 10 * time.Second},
		{"ramp down", LoadConfig{Scenario: ScenarioRamp, Rate: 1000, RateEnd: 10, Duration: 10 * time.Second}, 5050, 10 * time.Second},
		{"ramp from zero", LoadConfig{Scenario: ScenarioRamp, Rate: 0.0001, RateEnd: 200, Duration: 2 * time.Second}, 200, 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadSchedule(tt.cfg)
			if len(s) != tt.n {
				t.Fatalf("len = %d, want %d", len(s), tt.n)
			}
			for i := 1; i < len(s); i++ {
				if s[i] < s[i-1] {
					t.Fatalf("offset %d (%v) before offset %d (%v)", i, s[i], i-1, s[i-1])
				}
			}
			if s[0] != 0 || s[len(s)-1] > tt.last {
				t.Errorf("offsets span %v..%v, want 0..≤%v", s[0], s[len(s)-1], tt.last)
			}
			// In the first and the last tenth of the run, a ramp offers at
			// roughly its start and end rate.
			if tt.cfg.Scenario == ScenarioRamp {
				tenth := tt.cfg.Duration / 10
				first, lastN := 0, 0
				for _, at := range s {
					if at < tenth {
						first++
					}
					if at >= tt.cfg.Duration-tenth {
						lastN++
					}
				}
				if (tt.cfg.RateEnd > tt.cfg.Rate) != (lastN > first) {
					t.Errorf("first tenth %d, last tenth %d: ramp goes the wrong way", first, lastN)
				}
			}
		})
	}
}

func TestParseLoadMix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    LoadMix
		wantErr bool
	}{
		{"p0=1,p1=3,p2=6", LoadMix{P0: 1, P1: 3, P2: 6}, false},
		{"none", LoadMix{None: 1}, false},
		{" none=2 , p0=0.5 ", LoadMix{None: 2, P0: 0.5}, false},
		{"p1", LoadMix{P1: 1}, false},
		{"p3=1", LoadMix{}, true},
		{"p0=-1", LoadMix{}, true},
		{"p0=x", LoadMix{}, true},
		{"p0=0", LoadMix{}, true},
		{"", LoadMix{}, true},
	}
	for _, tt := range tests {
		got, err := ParseLoadMix(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseLoadMix(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil {
			if back, err := ParseLoadMix(got.String()); err != nil || back != got {
				t.Errorf("ParseLoadMix(%q.String() = %q) = %+v, %v", tt.in, got.String(), back, err)
			}
		}
	}
	// Picking follows the weights.
	rng := mrand.New(mrand.NewPCG(1, 2))
	m := LoadMix{P0: 1, P2: 3}
	counts := map[string]int{}
	for range 4000 {
		counts[m.pick(rng)]++
	}
	if counts["p1"] != 0 || counts[""] != 0 || counts["p0"] < 800 || counts["p0"] > 1200 {
		t.Errorf("picks = %v, want about 1000 p0 and 3000 p2", counts)
	}
}

func TestLoadConfigValidate(t *testing.T) {
	t.Parallel()
	base := LoadConfig{BaseURL: "http://127.0.0.1:1", Secret: []byte("s")}
	tests := []struct {
		name  string
		edit  func(*LoadConfig)
		field string
	}{
		{"no url", func(c *LoadConfig) { c.BaseURL = "" }, "BaseURL"},
		{"bad url", func(c *LoadConfig) { c.BaseURL = "ftp://x" }, "BaseURL"},
		{"no secret", func(c *LoadConfig) { c.Secret = nil }, "Secret"},
		{"bad scenario", func(c *LoadConfig) { c.Scenario = "spike" }, "Scenario"},
		{"bad follow", func(c *LoadConfig) { c.Follow = "webhook" }, "Follow"},
		{"negative rate", func(c *LoadConfig) { c.Rate = -1 }, "Rate"},
		{"bad mix", func(c *LoadConfig) { c.Mix = LoadMix{P0: -1} }, "Mix"},
		{"too many", func(c *LoadConfig) { c.Rate = 1e9 }, "Scenario"},
	}
	for _, tt := range tests {
		c := base
		tt.edit(&c)
		_, err := RunLoad(t.Context(), c)
		if err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: RunLoad error = %v, want one naming %s", tt.name, err, tt.field)
		}
	}
}

func TestLoadQuestions(t *testing.T) {
	t.Parallel()
	rng := mrand.New(mrand.NewPCG(3, 4))
	kinds := map[string]int{}
	texts := map[string]bool{}
	for range 2000 {
		q := loadNewQuestion(rng)
		kinds[q.kind]++
		texts[q.text] = true
		if n := utf8.RuneCountInString(q.text); n == 0 || n > 2000 || !utf8.ValidString(q.text) {
			t.Fatalf("question %q: bad text", q.text)
		}
	}
	for _, k := range []string{loadKindHot, loadKindOrder, loadKindRefund, loadKindChatZH, loadKindChatEN} {
		if kinds[k] == 0 {
			t.Errorf("kind %s never drawn in 2000 questions: %v", k, kinds)
		}
	}
	if len(texts) < 300 {
		t.Errorf("%d distinct texts in 2000 questions, want varied free text", len(texts))
	}
	for range 1000 {
		if o := loadOrderNumber(rng); len(o) != 16 || loadLuhnValid(o) {
			t.Fatalf("order number %s: want 16 digits failing Luhn", o)
		}
	}
	if !loadLuhnValid("4111111111111111") || loadLuhnValid("4111111111111112") {
		t.Error("loadLuhnValid disagrees with a known card number")
	}
}

func TestLoadReportOutputs(t *testing.T) {
	t.Parallel()
	f := loadSetupFake(t, loadFakeKnobs{answerDelay: 5 * time.Millisecond, reject: loadRejectEvery, never: 3})
	rep, err := RunLoad(t.Context(), f.config(LoadConfig{
		Scenario: ScenarioSteady, Rate: 150, Duration: time.Second, Concurrency: 16,
		Mix: LoadMix{P0: 1, P1: 3, P2: 6}, Deadline: 500 * time.Millisecond, Linger: 20 * time.Millisecond,
	}))
	if err != nil {
		t.Fatalf("RunLoad: %v", err)
	}

	var html bytes.Buffer
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatalf("WriteHTML: %v", err)
	}
	h := html.String()
	if n := strings.Count(h, "<svg"); n != 3 || strings.Count(h, "</svg>") != 3 {
		t.Errorf("HTML has %d <svg> and %d </svg>, want 3 charts", n, strings.Count(h, "</svg>"))
	}
	for _, tag := range []string{"html", "head", "body", "table", "style", "h2"} {
		if open, closed := strings.Count(h, "<"+tag), strings.Count(h, "</"+tag+">"); open != closed || open == 0 {
			t.Errorf("HTML has %d <%s and %d </%s>", open, tag, closed, tag)
		}
	}
	lower := strings.ToLower(h)
	for _, bad := range []string{"<script", "src=", `href="http`, "href='http", "@import", "url("} {
		if strings.Contains(lower, bad) {
			t.Errorf("HTML contains %q; it must be self-contained", bad)
		}
	}
	if !strings.Contains(h, "<path d=\"M") {
		t.Error("HTML charts draw no lines")
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	for _, want := range []string{"offered", "lost", "p99", "answer", "accept"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatalf("WriteJSON: %v", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatalf("JSON report: %v", err)
	}
	p99, ok := loadPath(doc, "latency_ms", "all", "answer", "p99").(float64)
	if !ok || p99 <= 0 {
		t.Errorf("latency_ms.all.answer.p99 = %v, want a positive number", loadPath(doc, "latency_ms", "all", "answer", "p99"))
	}
	if loadPath(doc, "rejected", "rate_limited_429") != float64(rep.Rejected.RateLimited429) || doc["lost"] != 1.0 {
		t.Errorf("JSON counts disagree with the report: rejected %v lost %v", doc["rejected"], doc["lost"])
	}
	if _, ok := doc["series"].([]any); !ok {
		t.Error("JSON report lacks series")
	}
	if strings.Contains(js.String(), string(loadTestSecret)) {
		t.Error("JSON report contains the secret")
	}
	var back LoadReport
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON report does not read back: %v", err)
	}
	if back.Lost != rep.Lost || back.Latency.ByPriority["all"] != rep.Latency.ByPriority["all"] {
		t.Errorf("JSON round trip changed the report")
	}
}

func loadPath(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// The shedding stretch runs from the first to the last shed offer (answered
// on POST or refused 429) and counts every offer completed within it.
func TestLoadShedding(t *testing.T) {
	t.Parallel()
	start := time.Unix(1000, 0)
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	offers := []*loadOffer{
		{outcome: loadAccepted, doneAt: at(0.5)},             // queued before the shedding
		{outcome: loadAccepted, onPost: true, doneAt: at(1)}, // first shed answer
		{outcome: loadAccepted, doneAt: at(1.5)},             // p0 still queued meanwhile
		{outcome: loadRateLimited, doneAt: at(2)},            // shed with 429
		{outcome: loadOverloaded, doneAt: at(2.5)},           // within, counted as an offer
		{outcome: loadAccepted, onPost: true, doneAt: at(3)}, // last shed answer
		{outcome: loadAccepted, doneAt: at(4)},               // after
		{outcome: loadNotSent},
	}
	sh := loadShedding(start, offers)
	want := &LoadShedding{FromS: 1, ToS: 3, Offers: 5, OffersPerS: 2.5, AnsweredOnPost: 2, Rejected429: 1}
	if sh == nil || *sh != *want {
		t.Fatalf("shedding %+v, want %+v", sh, want)
	}
	if got := loadShedding(start, offers[:1]); got != nil {
		t.Errorf("no shed offer: %+v, want nil", got)
	}
}

// An answer given on the POST counts only once it is seen stored (its reply
// event, or the conversation read back): one never stored is reported and
// fails the check, in both follow modes; the stored ones are not.
func TestLoadAnswersOnPostMustBeStored(t *testing.T) {
	t.Parallel()
	for _, follow := range []LoadFollow{LoadFollowSSE, LoadFollowPoll} {
		t.Run(string(follow), func(t *testing.T) {
			t.Parallel()
			instant := func(n int) bool { return n%3 == 0 }
			f := loadSetupFake(t, loadFakeKnobs{answerDelay: 10 * time.Millisecond, instant: instant, unstored: 7})
			rep, err := RunLoad(t.Context(), f.config(LoadConfig{
				Scenario: ScenarioBurst, Messages: 60, Within: 200 * time.Millisecond, Concurrency: 8,
				Conversations: 6, Follow: follow, Deadline: 800 * time.Millisecond, Linger: 100 * time.Millisecond, Seed: 3,
			}))
			if err != nil {
				t.Fatalf("RunLoad: %v", err)
			}
			if rep.AnsweredOnPost != 21 || rep.ShedUnstored != 1 || rep.Lost != 0 || rep.Answered != 60 {
				t.Errorf("on POST %d, not stored %d, lost %d, answered %d; want 21, 1, 0, 60",
					rep.AnsweredOnPost, rep.ShedUnstored, rep.Lost, rep.Answered)
			}
			if len(rep.LostSamples) != 1 || !strings.Contains(rep.LostSamples[0], "m7 ") {
				t.Errorf("lost samples %q, want the answer to m7", rep.LostSamples)
			}
			if err := rep.Check(); err == nil {
				t.Error("Check() = nil for a run with an answer never stored")
			}
		})
	}
}
