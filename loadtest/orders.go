package loadtest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/loadtest/sse"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// ScenarioOrders is the order scenario (RunOrders): customers of the
// simulated shop's catalogue ask where their orders are — with an order
// number, with a tracking number, without a number — in Chinese and
// English, each in a conversation of their own, and the run follows each to
// its first reply and to its final answer.
const ScenarioOrders Scenario = "orders"

// OrdersConfig configures RunOrders. Zero fields take the defaults named.
type OrdersConfig struct {
	// BaseURL is the peakdesk edge; Secret its PEAKDESK_JWT_SECRET.
	// Required.
	BaseURL string
	Secret  []byte
	// Shop is the tenant; its shop API must be the simulated shop (whose
	// catalogue knows the customers). Default "demo".
	Shop string
	// Rate is how many customers ask per second. Default 5.
	Rate float64
	// Duration is how long customers keep coming. Default 4 minutes.
	Duration time.Duration
	// FirstBudget is the message's budget: every customer must get a first
	// reply within it. Default 25 s (p1's answer budget).
	FirstBudget time.Duration
	// Deadline is how long after the last customer asked the run waits for
	// final answers. Default 5 minutes.
	Deadline time.Duration
	// Linger keeps the streams open after the last final answer, to catch
	// a second one. Default 3 s.
	Linger time.Duration
	// Seed makes the questions repeatable.
	Seed int64
	// Logger receives progress lines. Default: discard.
	Logger *slog.Logger
}

func (c *OrdersConfig) setDefaults() {
	c.Shop = cmp.Or(c.Shop, "demo")
	c.Rate = cmp.Or(c.Rate, 5)
	c.Duration = cmp.Or(c.Duration, 4*time.Minute)
	c.FirstBudget = cmp.Or(c.FirstBudget, 25*time.Second)
	c.Deadline = cmp.Or(c.Deadline, 5*time.Minute)
	c.Linger = cmp.Or(c.Linger, 3*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *OrdersConfig) validate() error {
	switch {
	case c.BaseURL == "" || len(c.Secret) == 0:
		return errors.New("orders config: BaseURL and Secret are required")
	case c.Rate <= 0 || math.IsInf(c.Rate, 0) || c.Duration <= 0:
		return errors.New("orders config: Rate and Duration must be positive")
	case c.Rate*c.Duration.Seconds() > 100_000:
		return errors.New("orders config: at most 100,000 customers")
	}
	return nil
}

// Kinds of order questions.
const (
	orderKindNumber   = "number"
	orderKindTracking = "tracking"
	orderKindNone     = "no_number"
)

var (
	ordersZHNumber = []string{"我的订单%s到哪了？", "订单%s什么时候发货？", "快递怎么还没到，订单号%s", "订单%s的物流到哪了"}
	ordersENNumber = []string{"Where is my package? Order %s", "Has order %s shipped yet?", "Tracking for order %s please"}
	ordersZHTrack  = []string{"运单号%s的快递到哪了？"}
	ordersENTrack  = []string{"Where is parcel %s?"}
	ordersZHNone   = []string{"我的订单到哪了？", "我的快递怎么还没到？", "我买的东西发货了吗，物流到哪了"}
	ordersENNone   = []string{"Where is my order?", "Where's my parcel?", "When will my package arrive?"}
)

// orderCustomer is one customer: their question and what came of it.
type orderCustomer struct {
	user, kind, lang, text, token string

	sentAt    time.Time
	accepted  bool
	postErr   string
	messageID string
	convID    string

	mu        sync.Mutex
	replies   map[string]orderReply // by reply id
	firstAt   time.Time
	finalAt   time.Time
	finals    int
	checkings int
	final     orderReply
	// wrongLang counts peakdesk's own texts (not the LLM's) to this
	// customer in the other language.
	wrongLang int
	wrongText string
}

type orderReply struct {
	ID       string `json:"reply_id"`
	Source   string `json:"source"`
	Text     string `json:"text"`
	FollowUp bool   `json:"follow_up"`
}

// OrdersReport is the outcome of RunOrders.
type OrdersReport struct {
	Scenario  Scenario  `json:"scenario"`
	Env       LoadEnv   `json:"env"`
	StartedAt time.Time `json:"started_at"`
	DurationS float64   `json:"duration_s"`
	Rate      float64   `json:"rate"`
	// Customers asked; Accepted got a 2xx.
	Customers int            `json:"customers"`
	Accepted  int            `json:"accepted"`
	Errors    map[string]int `json:"errors,omitempty"`
	// FirstInBudget got a first reply within FirstBudget; Checking were
	// first told "checking" (follow_up) and answered later.
	FirstInBudget int `json:"first_in_budget"`
	FirstLate     int `json:"first_late"`
	Checking      int `json:"checking"`
	// Final answers: exactly one (OK), none by the deadline (Lost), more
	// than one (Twice).
	FinalOnce int `json:"final_once"`
	Lost      int `json:"lost"`
	Twice     int `json:"twice"`
	// FinalSources counts the final answers by source; Handoffs are those
	// where a human took over.
	FinalSources map[string]int `json:"final_sources"`
	Handoffs     int            `json:"handoffs"`
	// WrongLanguage counts customers who got one of peakdesk's own texts
	// (checking, order facts, follow-up, handoff — not the LLM's words) in
	// the other language; ChineseFollowUps those asking in Chinese whose
	// final answer a follow-up pushed.
	WrongLanguage    int `json:"wrong_language"`
	ChineseFollowUps int `json:"zh_follow_ups"`
	// Kinds counts customers by question kind and language.
	Kinds map[string]int `json:"kinds"`
	// Latencies in ms: first reply and final answer, from the POST.
	First        LoadPercentiles `json:"first_ms"`
	Final        LoadPercentiles `json:"final_ms"`
	FinalChecked LoadPercentiles `json:"final_after_checking_ms"`
	Samples      []string        `json:"samples,omitempty"`
}

// RunOrders runs the order scenario against cfg.BaseURL and reports
// whether every customer got a first reply within the budget and exactly
// one final answer. Lost or twice-answered customers are findings in the
// report, not errors.
func RunOrders(ctx context.Context, cfg OrdersConfig) (*OrdersReport, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("run orders: %w", err)
	}
	base := strings.TrimRight(cfg.BaseURL, "/")
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	streams := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}}
	defer client.CloseIdleConnections()
	defer streams.CloseIdleConnections()

	// Customers "u<n>" of the catalogue with at least one order (n%4 > 0),
	// from a range of this run's own.
	n := int(math.Round(cfg.Rate * cfg.Duration.Seconds()))
	rng := mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x9e3779b97f4a7c15))
	var b [4]byte
	_, _ = rand.Read(b[:])
	first := 1_000_000 + int(binary.BigEndian.Uint32(b[:])%8_000_000)
	customers := make([]*orderCustomer, n)
	num := first
	for i := range customers {
		for num%4 == 0 {
			num++
		}
		c, err := newOrderCustomer(cfg, rng, fmt.Sprintf("u%d", num))
		if err != nil {
			return nil, err
		}
		customers[i] = c
		num++
	}

	followCtx, stopFollowing := context.WithCancel(ctx)
	defer stopFollowing()
	var follows sync.WaitGroup
	rep := &OrdersReport{Scenario: ScenarioOrders, Env: loadEnvironment(), StartedAt: time.Now().UTC(), Rate: cfg.Rate}
	start := time.Now()

	// Ask on schedule; each accepted customer's conversation is followed.
	var posts sync.WaitGroup
	for i, c := range customers {
		if peakdesk.Sleep(ctx, time.Until(start.Add(time.Duration(float64(i)/cfg.Rate*float64(time.Second))))) != nil {
			break
		}
		posts.Go(func() {
			c.post(ctx, client, base)
			if c.accepted {
				follows.Go(func() { c.follow(followCtx, streams, base) })
			}
		})
	}
	posts.Wait()
	lastAsked := time.Now()

	// Wait for every final answer (or the deadline), then linger.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	nextLog := time.Now().Add(5 * time.Second)
	for {
		done := 0
		for _, c := range customers {
			if !c.accepted || c.finalCount() > 0 {
				done++
			}
		}
		if time.Now().After(nextLog) {
			cfg.Logger.Info("orders progress", "elapsed", time.Since(start).Round(time.Second).String(),
				"customers", len(customers), "done", done)
			nextLog = time.Now().Add(5 * time.Second)
		}
		if done == len(customers) || time.Now().After(lastAsked.Add(cfg.Deadline)) || ctx.Err() != nil {
			break
		}
		<-tick.C
	}
	_ = peakdesk.Sleep(ctx, cfg.Linger)
	stopFollowing()
	follows.Wait()
	rep.DurationS = time.Since(start).Seconds()
	rep.fill(customers, cfg)
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("run orders: interrupted: %w", err)
	}
	return rep, nil
}

func newOrderCustomer(cfg OrdersConfig, rng *mrand.Rand, user string) (*orderCustomer, error) {
	tok, err := token.Sign(cfg.Secret, cfg.Shop, user, nil, cfg.Duration+cfg.Deadline+time.Hour)
	if err != nil {
		return nil, fmt.Errorf("token for %s: %w", user, err)
	}
	c := &orderCustomer{user: user, token: tok, lang: "zh", replies: map[string]orderReply{}}
	if rng.IntN(3) == 0 {
		c.lang = "en"
	}
	pick := func(zh, en []string) string {
		if c.lang == "en" {
			return en[rng.IntN(len(en))]
		}
		return zh[rng.IntN(len(zh))]
	}
	ids := shopsim.CustomerOrderIDs(user)
	id := ids[rng.IntN(len(ids))]
	switch x := rng.IntN(10); {
	case x < 5:
		c.kind, c.text = orderKindNumber, fmt.Sprintf(pick(ordersZHNumber, ordersENNumber), id)
	case x < 6:
		o, _ := shopsim.CatalogueOrder(cfg.Shop, id)
		if o.Logistics.TrackingNo == "" { // not shipped yet: ask by order number
			c.kind, c.text = orderKindNumber, fmt.Sprintf(pick(ordersZHNumber, ordersENNumber), id)
			break
		}
		c.kind, c.text = orderKindTracking, fmt.Sprintf(pick(ordersZHTrack, ordersENTrack), o.Logistics.TrackingNo)
	default:
		c.kind, c.text = orderKindNone, pick(ordersZHNone, ordersENNone)
	}
	return c, nil
}

// post asks the customer's question.
func (c *orderCustomer) post(ctx context.Context, client *http.Client, base string) {
	body, _ := json.Marshal(map[string]string{"text": c.text})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/messages", strings.NewReader(string(body)))
	if err != nil {
		c.postErr = "request"
		return
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	c.sentAt = time.Now()
	resp, err := client.Do(req)
	if err != nil {
		c.postErr = "transport"
		return
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		c.postErr = fmt.Sprintf("%d", resp.StatusCode)
		return
	}
	var out struct {
		MessageID      string      `json:"message_id"`
		ConversationID string      `json:"conversation_id"`
		Reply          *orderReply `json:"reply"`
	}
	if json.Unmarshal(raw, &out) != nil || out.ConversationID == "" {
		c.postErr = "bad response"
		return
	}
	c.accepted, c.messageID, c.convID = true, out.MessageID, out.ConversationID
	if out.Reply != nil && out.Reply.ID != "" {
		c.observe(*out.Reply, time.Now())
	}
}

// follow reads the conversation's reply events until ctx ends,
// reconnecting from the last event id.
func (c *orderCustomer) follow(ctx context.Context, client *http.Client, base string) {
	last := ""
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet,
			base+"/v1/conversations/"+url.PathEscape(c.convID)+"/events", nil)
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Accept", "text/event-stream")
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		resp, err := client.Do(req)
		if err == nil && resp.StatusCode == http.StatusOK {
			events := sse.NewReader(resp.Body)
			for {
				ev, err := events.Next()
				if id := events.LastEventID(); id != "" {
					last = id
				}
				if err != nil {
					break
				}
				var r orderReply
				if (ev.Type == "" || ev.Type == "reply") && json.Unmarshal([]byte(ev.Data), &r) == nil && r.ID != "" {
					c.observe(r, time.Now())
				}
			}
		}
		if resp != nil {
			resp.Body.Close()
		}
		_ = peakdesk.Sleep(ctx, 200*time.Millisecond)
	}
}

// observe records a reply on the customer's conversation (each reply id
// once).
func (c *orderCustomer) observe(r orderReply, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, seen := c.replies[r.ID]; seen {
		return
	}
	c.replies[r.ID] = r
	if ownText(r) && texts.Detect(r.Text, "") != texts.Lang(c.lang) {
		c.wrongLang++
		c.wrongText = r.Text
	}
	if c.firstAt.IsZero() {
		c.firstAt = at
	}
	if r.FollowUp {
		c.checkings++
		return
	}
	c.finals++
	if c.finals == 1 {
		c.finalAt, c.final = at, r
	}
}

// ownText reports whether r is one of peakdesk's own texts (templates in
// the customer's language), not the LLM's words.
func ownText(r orderReply) bool {
	switch r.Source {
	case peakdesk.SourceOrder, peakdesk.SourceFollowUp, peakdesk.SourceHandoff:
		return true
	}
	return false
}

func (c *orderCustomer) finalCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.finals
}

// fill computes the report.
func (rep *OrdersReport) fill(customers []*orderCustomer, cfg OrdersConfig) {
	rep.Errors, rep.FinalSources, rep.Kinds = map[string]int{}, map[string]int{}, map[string]int{}
	first, final, checked := loadNewHist(), loadNewHist(), loadNewHist()
	for _, c := range customers {
		rep.Customers++
		rep.Kinds[c.kind+"/"+c.lang]++
		if !c.accepted {
			if c.postErr != "" {
				rep.Errors[c.postErr]++
			}
			continue
		}
		rep.Accepted++
		c.mu.Lock()
		switch {
		case c.firstAt.IsZero():
		case c.firstAt.Sub(c.sentAt) <= cfg.FirstBudget:
			rep.FirstInBudget++
		default:
			rep.FirstLate++
		}
		if !c.firstAt.IsZero() {
			loadRecord(first, c.firstAt.Sub(c.sentAt))
		}
		if c.checkings > 0 {
			rep.Checking++
		}
		if c.wrongLang > 0 {
			rep.WrongLanguage++
			if len(rep.Samples) < 10 {
				rep.Samples = append(rep.Samples, fmt.Sprintf("in the wrong language: %s asked %q (%s), got %q", c.user, c.text, c.lang, c.wrongText))
			}
		}
		if c.lang == string(texts.ZH) && c.finals > 0 && c.final.Source == peakdesk.SourceFollowUp {
			rep.ChineseFollowUps++
		}
		switch c.finals {
		case 0:
			rep.Lost++
			if len(rep.Samples) < 10 {
				rep.Samples = append(rep.Samples, fmt.Sprintf("lost: %s %q conversation %s", c.user, c.text, c.convID))
			}
		case 1:
			rep.FinalOnce++
		default:
			rep.Twice++
			if len(rep.Samples) < 10 {
				rep.Samples = append(rep.Samples, fmt.Sprintf("answered %d times: %s %q conversation %s", c.finals, c.user, c.text, c.convID))
			}
		}
		if c.finals > 0 {
			rep.FinalSources[c.final.Source]++
			if c.final.Source == peakdesk.SourceHandoff {
				rep.Handoffs++
			}
			loadRecord(final, c.finalAt.Sub(c.sentAt))
			if c.checkings > 0 {
				loadRecord(checked, c.finalAt.Sub(c.sentAt))
			}
		}
		c.mu.Unlock()
	}
	rep.First, rep.Final, rep.FinalChecked = loadPercentilesOf(first), loadPercentilesOf(final), loadPercentilesOf(checked)
}

// Print writes the report as a table.
func (rep *OrdersReport) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\torders, %.1f customers/s, %.0f s, %s (%s, %d CPUs)\n", rep.Rate, rep.DurationS,
		rep.StartedAt.Format("2006-01-02 15:04 MST"), rep.Env.Hostname, rep.Env.CPUs)
	fmt.Fprintf(tw, "customers\t%d asked, %d accepted, errors %v\n", rep.Customers, rep.Accepted, rep.Errors)
	fmt.Fprintf(tw, "first reply\t%d within budget, %d late, %d told \"checking\" first\n", rep.FirstInBudget, rep.FirstLate, rep.Checking)
	fmt.Fprintf(tw, "final answer\t%d exactly once, %d lost, %d answered twice; %d handed to a human\n", rep.FinalOnce, rep.Lost,
		rep.Twice, rep.Handoffs)
	fmt.Fprintf(tw, "final sources\t%s\n", countsString(rep.FinalSources))
	fmt.Fprintf(tw, "language\t%d customers got a text of ours in the other language; %d Chinese customers answered by a follow-up\n",
		rep.WrongLanguage, rep.ChineseFollowUps)
	fmt.Fprintf(tw, "questions\t%s\n", countsString(rep.Kinds))
	for _, l := range []struct {
		name string
		s    LoadPercentiles
	}{{"first reply ms", rep.First}, {"final answer ms", rep.Final}, {"final after checking ms", rep.FinalChecked}} {
		fmt.Fprintf(tw, "%s\tp50 %.1f  p90 %.1f  p99 %.1f  max %.1f  (n=%d)\n", l.name, l.s.P50, l.s.P90, l.s.P99, l.s.Max, l.s.Count)
	}
	for _, s := range rep.Samples {
		fmt.Fprintf(tw, "sample\t%s\n", s)
	}
	_ = tw.Flush()
}

// OK reports whether every customer got a first reply within the budget
// and exactly one final answer, and our texts in their language.
func (rep *OrdersReport) OK() bool {
	return rep.Accepted == rep.Customers && rep.FirstInBudget == rep.Accepted && rep.Lost == 0 && rep.Twice == 0 &&
		rep.WrongLanguage == 0
}

func countsString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
