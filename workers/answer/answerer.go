// Package answer produces the reply to a customer's question whatever the
// LLM provider is doing: the primary model, then the secondary, then the
// shop's FAQ, then a polite handoff to a human — each step recorded as the
// reply's source. Around the LLM it masks personal data, coalesces bursts of
// identical general questions across processes, caches hot answers briefly,
// accounts tokens and cost, and keeps each shop's LLM spend and each end
// user's LLM answers within the shop's caps (see limits.go).
//
// The worker calls Answer once per conversation turn and stores what it
// returns; Answer returns an answer for every request unless its context is
// cancelled. When the request offers tools, the model answering may call
// them (see Request.Tools and tools.go).
package answer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/faq"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// Config configures an Answerer.
type Config struct {
	// DB holds the per-shop LLM settings, the FAQ entries (when FAQ is nil)
	// and the PII audit records. Required.
	DB *storage.DB
	// Redis shares the circuit breakers' state between processes and holds
	// the burst coalescing keys and the answer cache. Required. When it is
	// unreachable the Answerer keeps answering: breakers turn local and
	// every question is answered on its own.
	Redis *redis.Client
	// Provider is the default LLM provider and model chain (primary first);
	// a shop's settings in Postgres override it field by field. Required.
	Provider llm.Provider
	// Prices is the price table per model (USD per million tokens). A model
	// not in it costs 0 and is logged once; a shop with a spend cap does
	// not call it (its cost could not be counted).
	Prices llm.Prices
	// FXRates converts the price table's dollars into each shop's currency
	// for its spend cap. Default llm.DefaultFXRates (CNY=7.2). A shop with
	// a spend cap in a currency missing here gets no LLM calls.
	FXRates llm.FXRates
	// FAQ is the FAQ engine. Nil makes the Answerer build its own from DB
	// and run it between Start and Stop; pass the process's engine to share
	// one with the ingest edge (its owner starts and stops it).
	FAQ *faq.Engine
	// FAQThreshold and FAQRefresh configure the engine built when FAQ is
	// nil. Defaults faq.DefaultThreshold and 2 s.
	FAQThreshold float64
	FAQRefresh   time.Duration
	// FAQContext is how many FAQ entries are given to the LLM as context.
	// Default 3; negative gives none.
	FAQContext int
	// LLM configures the calls: timeouts, the linear retry schedule, the
	// circuit breakers. Its Redis, Clock, Logger, Registerer, HTTPClient and
	// KeyPrefix default to the Answerer's.
	LLM llm.CallerConfig
	// DefaultBudget is the time an answer may take when a Request has no
	// Deadline. Default 30 s.
	DefaultBudget time.Duration
	// CacheTTL is how long an LLM answer to a general question is served
	// from the Redis cache. Default 30 s.
	CacheTTL time.Duration
	// CoalesceWait is the longest a question waits for another process's
	// answer to the same question before answering it itself (never more
	// than half the time left to its deadline). Default 5 s.
	CoalesceWait time.Duration
	// SettingsTTL is how long a shop's LLM settings are cached. Default 30 s.
	SettingsTTL time.Duration
	// SystemPrompt is the system message; "{shop}" is replaced by the shop
	// id. Default DefaultSystemPrompt.
	SystemPrompt string
	// KeyPrefix starts every Redis key. Default "pd:".
	KeyPrefix string
	// Clock is the retry loop's clock. Default llm.SystemClock.
	Clock llm.Clock
	// HTTPClient is used for every provider. Default llm.NewHTTPClient().
	HTTPClient *http.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; default a private registry. Never
	// the global default registry.
	Registerer prometheus.Registerer
}

// DefaultSystemPrompt is the default system message.
const DefaultSystemPrompt = "You are the customer-service assistant of the online shop {shop}. " +
	"Answer briefly and politely in the customer's language. Never invent order facts, prices or promises. " +
	"Personal data in the conversation is masked (like 138****5678); never ask the customer to repeat it."

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Clock == nil {
		c.Clock = llm.SystemClock{}
	}
	if c.HTTPClient == nil {
		c.HTTPClient = llm.NewHTTPClient()
	}
	c.KeyPrefix = cmp.Or(c.KeyPrefix, "pd:")
	c.FAQContext = cmp.Or(c.FAQContext, 3)
	c.DefaultBudget = cmp.Or(c.DefaultBudget, 30*time.Second)
	c.CacheTTL = cmp.Or(c.CacheTTL, 30*time.Second)
	c.CoalesceWait = cmp.Or(c.CoalesceWait, 5*time.Second)
	c.SettingsTTL = cmp.Or(c.SettingsTTL, 30*time.Second)
	c.SystemPrompt = cmp.Or(c.SystemPrompt, DefaultSystemPrompt)
	if c.Prices == nil {
		c.Prices = llm.Prices{}
	}
	if c.FXRates == nil {
		c.FXRates, _ = llm.ParseFXRates(llm.DefaultFXRates)
	}
	if c.LLM.Redis == nil {
		c.LLM.Redis = c.Redis
	}
	if c.LLM.Clock == nil {
		c.LLM.Clock = c.Clock
	}
	if c.LLM.Logger == nil {
		c.LLM.Logger = c.Logger
	}
	if c.LLM.Registerer == nil {
		c.LLM.Registerer = c.Registerer
	}
	if c.LLM.HTTPClient == nil {
		c.LLM.HTTPClient = c.HTTPClient
	}
	c.LLM.KeyPrefix = cmp.Or(c.LLM.KeyPrefix, c.KeyPrefix)
}

func (c *Config) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("answer: config: DB is required")
	case c.Redis == nil:
		return errors.New("answer: config: Redis is required")
	case c.DefaultBudget < 0 || c.CacheTTL < 0 || c.CoalesceWait < 0 || c.SettingsTTL < 0:
		return errors.New("answer: config: DefaultBudget, CacheTTL, CoalesceWait and SettingsTTL must not be negative")
	}
	if err := c.Provider.Validate(); err != nil {
		return fmt.Errorf("answer: config: Provider: %w", err)
	}
	return nil
}

// Answerer answers customer questions with graded fallback. It is safe for
// concurrent use.
type Answerer struct {
	cfg      Config
	log      *slog.Logger
	caller   *llm.Caller
	faq      *faq.Engine
	ownFAQ   bool
	metrics  *metrics
	settings *settingsCache
	limits   *limiter

	capLogged sync.Map // shop -> *atomic.Int64: unix nanos of the last "capped" warning

	flightsMu sync.Mutex
	flights   map[string]*flight // in-process coalescing, by key
	locks     *redislock.Client  // the leader leases of coalescing across processes

	unpriced sync.Map // models already logged as missing from the price table

	startOnce, stopOnce sync.Once
}

// New returns an Answerer for cfg. Call Start before Answer.
func New(cfg Config) (*Answerer, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	caller, err := llm.NewCaller(cfg.LLM)
	if err != nil {
		return nil, fmt.Errorf("answer: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("answer: metrics: %w", err)
	}
	a := &Answerer{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "answerer"),
		caller:   caller,
		faq:      cfg.FAQ,
		metrics:  m,
		settings: newSettingsCache(cfg.DB, cfg.Provider, cfg.SettingsTTL),
		limits:   newLimiter(cfg.Redis, cfg.KeyPrefix, cfg.Logger.With("component", "answerer")),
		flights:  map[string]*flight{},
		locks:    redislock.New(cfg.Redis),
	}
	if a.faq == nil {
		a.ownFAQ = true
		a.faq, err = faq.New(faq.Config{DB: cfg.DB, Threshold: cfg.FAQThreshold, Refresh: cfg.FAQRefresh,
			Logger: cfg.Logger, Registerer: cfg.Registerer})
		if err != nil {
			return nil, fmt.Errorf("answer: %w", err)
		}
	}
	return a, nil
}

// Start loads the FAQ indexes (when the Answerer owns its FAQ engine) and
// starts their refresh. It returns once they are loaded, or fails fast.
func (a *Answerer) Start(ctx context.Context) error {
	var err error
	a.startOnce.Do(func() {
		if a.ownFAQ {
			err = a.faq.Start(ctx)
		}
	})
	return err
}

// Stop stops what Start started and waits for it. It is idempotent. Calls
// of Answer still running finish; their FAQ step finds nothing.
func (a *Answerer) Stop() {
	a.stopOnce.Do(func() {
		if a.ownFAQ {
			a.faq.Stop()
		}
	})
}

// ForgetShop drops what the Answerer cached of shop's settings (every
// shop's for ""): they changed. Subscribe it to the settings notifications
// (storage/shopwatch).
func (a *Answerer) ForgetShop(shop string) { a.settings.forget(shop) }

// FAQ returns the FAQ engine the Answerer uses, for sharing with the edge.
func (a *Answerer) FAQ() *faq.Engine { return a.faq }

// Request is one turn of a conversation to answer.
type Request struct {
	Shop, ConversationID string
	// User is the end user the turn answers; it keys the shop's cap of LLM
	// answers per user and hour. Empty: no per-user cap.
	User string
	// MessageIDs are the messages answered (several when messages queued up
	// while the conversation was busy); they key the PII audit record.
	MessageIDs []string
	Priority   peakdesk.Priority
	// Deadline is when the answer is due (per priority; the worker sets it).
	// Zero means now + DefaultBudget.
	Deadline time.Time
	// History is the earlier turns, oldest first.
	History []llm.Turn
	// Question is the customer's text (several queued messages: joined).
	Question string
	// OnDelta, when set, receives the answer's text piece by piece as the
	// model streams it. If the stream breaks, the Answer that follows
	// replaces the pieces (StreamBroken is set).
	OnDelta func(text string)
	// Tools are offered to the model that answers; CallTool runs the calls
	// it makes, one after the other in the model's order, for at most
	// MaxToolRounds rounds. A request with tools is never coalesced with
	// others nor answered from the cache: its answer depends on the
	// customer's own orders and may have effects.
	Tools []llm.Tool
	// CallTool runs one tool call: name is one of Tools, args are the
	// model's arguments as it wrote them (not masked, not checked: the tool
	// checks them). Its outcome's Text goes back to the model; an error is
	// for failures of peakdesk itself, the model is told the tool failed
	// and the answer goes on. ctx ends at the request's deadline. Required
	// when Tools are offered.
	CallTool func(ctx context.Context, name string, args json.RawMessage) (ToolOutcome, error)
	// Orders, when set, answers the turn from the shop's order data
	// without the LLM (see orders.go): asked first with first true (it
	// answers then only for a shop whose order_answers is direct), and
	// again, first false, when the model chain gave no answer, before the
	// FAQ. ok false: it did not answer. The actions its answer promises
	// (an order follow-up) are the caller's to store, like CallTool's. ctx
	// ends at the request's deadline.
	Orders func(ctx context.Context, first bool) (ans OrderAnswer, ok bool)
}

// ToolOutcome is what one tool call gave back.
type ToolOutcome struct {
	// Text is the tool's result for the model.
	Text string
	// Handoff means the conversation must be marked for a human agent.
	Handoff bool
}

// Answer is the reply to a Request.
type Answer struct {
	// Text is the reply, personal data masked.
	Text string
	// Source is the step that answered: peakdesk.SourceLLM,
	// SourceLLMSecondary, SourceFAQ, SourceHandoff, SourceCache or
	// SourceOrder.
	Source string
	// Model is the model that wrote the text (for cache, the original one;
	// for a fallback after tool rounds, the last model that ran one).
	Model string
	// PromptTokens and CompletionTokens are what this answer cost at the
	// provider, every round of tool calls included (0 for cache, and for
	// FAQ and handoff unless tool rounds ran before the LLM failed).
	PromptTokens, CompletionTokens int
	// CostMicroUSD is the tokens' price from the price table.
	CostMicroUSD int64
	// Masked counts the personal data masked in the question and the reply,
	// by kind (pii.Phone, pii.IDCard, pii.BankCard, pii.Email); the
	// Answerer has written the audit record already.
	Masked map[string]int
	// Handoff means the conversation must be marked for a human agent: the
	// answer is the handoff reply, or a tool asked for one.
	Handoff bool
	// ToolCalls names the tools CallTool ran, in order, for logs and
	// metrics. When it is not empty and Source is SourceHandoff, the LLM
	// failed after tools ran: their effects (the actions CallTool's caller
	// collected) stand, and the handoff reply tells the customer a human
	// follows up.
	ToolCalls []string
	// StreamBroken means text went to OnDelta that is not the answer (a
	// stream broke, or the LLM failed after a round of tool calls); Text
	// replaces it and the client must be told so.
	StreamBroken bool
	// Capped names the cap that kept a model from being called (CapSpend,
	// CapUserCalls, CapNoFXRate, CapUnpriced); empty when none did. The
	// answer may still be a cheaper model's.
	Capped string
}

// Answer answers req. It returns an error only when ctx is cancelled (or
// req names no shop); every failure of the LLM ends in a fallback answer.
func (a *Answerer) Answer(ctx context.Context, req Request) (*Answer, error) {
	if req.Shop == "" {
		return nil, errors.New("answer: request names no shop")
	}
	if len(req.Tools) > 0 && req.CallTool == nil {
		return nil, errors.New("answer: request offers tools without CallTool")
	}
	start := time.Now()
	deadline := req.Deadline
	if deadline.IsZero() {
		deadline = a.cfg.Clock.Now().Add(a.cfg.DefaultBudget)
	}
	log := a.log.With("shop", req.Shop, "conversation_id", req.ConversationID, "message_ids", req.MessageIDs)

	// 1. Mask personal data in what goes to the LLM. Only the new question
	// is counted; earlier turns were counted when they were new. Invisible
	// format characters go too: they can hide instructions from a reader.
	question, asked := pii.Mask(pii.StripFormat(strings.TrimSpace(req.Question)))
	history := make([]llm.Turn, len(req.History))
	for i, t := range req.History {
		history[i] = t
		history[i].Text, _ = pii.Mask(pii.StripFormat(t.Text))
	}
	t := turn{req: req, question: question, history: history, deadline: deadline, log: log}

	// 2. Answer: once per burst for general questions, else on our own.
	var ans *Answer
	if key, ok := a.coalesceKey(req, question, asked); ok {
		ans = a.coalesced(ctx, key, t)
	} else {
		ans = a.compose(ctx, t)
	}
	if ans == nil || ctx.Err() != nil {
		return nil, cmp.Or(ctx.Err(), errors.New("answer: no answer"))
	}

	// 3. Account: masking audit, spend, metrics.
	ans.Masked = addCounts(asked, ans.Masked)
	a.audit(ctx, log, req, ans.Masked)
	a.observe(req, ans, time.Since(start))
	return ans, nil
}

// turn is one request on its way through the steps.
type turn struct {
	req      Request
	question string     // masked
	history  []llm.Turn // masked
	deadline time.Time
	log      *slog.Logger
}

// compose walks the graded fallback: each model of the shop's chain, the
// FAQ, a handoff. It returns nil only when ctx is cancelled.
func (a *Answerer) compose(ctx context.Context, t turn) *Answer {
	// 0. An order question of a shop that answers them from its data.
	if ans, _ := a.orderAnswer(ctx, t, true); ans != nil {
		return ans
	}
	route := a.settings.get(ctx, t.req.Shop, t.log)
	var top, hints []faq.Match
	if a.cfg.FAQContext > 0 {
		top = a.faq.Top(ctx, t.req.Shop, t.question, a.cfg.FAQContext)
	}
	// Entries that share little with the question would only cost tokens.
	for _, m := range top {
		if m.Confidence >= a.faq.Threshold()/2 {
			hints = append(hints, m)
		}
	}
	// The shop's own contacts quoted from its FAQ are published; they stay.
	keep := map[string]bool{}
	for _, m := range hints {
		for v := range pii.Values(m.Answer) {
			keep[v] = true
		}
	}

	// 1. The model chain, streaming to the client while nothing broke. The
	// models share one conversation: a model that takes over from a failed
	// one continues it, the tool calls made and their results included, so
	// that no tool runs twice for one answer.
	cv := &conversation{turns: a.prompt(t, route.systemPrompt, hints)}
	models := route.Models
	if !a.takeUserCall(ctx, t, route) {
		cv.capped, models = CapUserCalls, nil
	}
	broken := false
	for i, model := range models {
		if !a.cfg.Clock.Now().Before(t.deadline) {
			t.log.Warn("answer deadline passed; skipping the rest of the model chain", "model", model)
			break
		}
		var stream func(string)
		if t.req.OnDelta != nil && !broken {
			stream = t.req.OnDelta
		}
		c, err := a.converse(ctx, t, route.at(i), model, cv, stream)
		if err == nil {
			text, masked := pii.MaskExcept(cv.text(c.Text), keep)
			source := peakdesk.SourceLLM
			if i > 0 {
				source = peakdesk.SourceLLMSecondary
			}
			a.noteCapped(t, route, cv.capped)
			return &Answer{Text: text, Source: source, Model: c.Model, PromptTokens: cv.promptTokens,
				CompletionTokens: cv.completionTokens, CostMicroUSD: cv.cost, Masked: addCounts(cv.masked, masked),
				Handoff: cv.handoff, ToolCalls: cv.called, StreamBroken: broken, Capped: cv.capped}
		}
		if ctx.Err() != nil {
			return nil
		}
		var capped *cappedError
		if errors.As(err, &capped) {
			cv.capped = cmp.Or(cv.capped, capped.reason)
			t.log.Debug("llm model skipped: capped", "model", model, "reason", capped.reason)
			continue
		}
		if errors.Is(err, llm.ErrStreamBroken) {
			broken = true
			a.metrics.streamsBroken.Inc()
		}
		if errors.Is(err, llm.ErrBreakerOpen) {
			t.log.Debug("llm model skipped: breaker open", "model", model)
		} else {
			t.log.Warn("llm model failed; falling back", "model", model, "tool_calls", cv.called, "err", err)
		}
	}

	// What the model chain cost and did stays accounted whatever answers.
	ans := &Answer{Model: cv.model, PromptTokens: cv.promptTokens, CompletionTokens: cv.completionTokens,
		CostMicroUSD: cv.cost, Masked: cv.masked, Handoff: cv.handoff, ToolCalls: cv.called,
		StreamBroken: broken || cv.shown, Capped: cv.capped}
	a.noteCapped(t, route, cv.capped)

	// 2. An order question, from the shop's data; then the FAQ, when an
	// entry is confident enough — unless tools ran. A
	// tool's effects (a refund requested, a coupon promised) are collected
	// by the caller, which inserts them with the reply; a FAQ text would
	// not say what was done, the handoff reply tells the customer a human
	// follows up and the agent sees the actions.
	if len(cv.called) == 0 {
		oa, general := a.orderAnswer(ctx, t, false)
		if oa != nil && !general {
			return withCosts(oa, ans)
		}
		// No order answer, or one that says only "no orders" / "no refund"
		// to what may be a general question ("退款多久能到账？"): a
		// confident FAQ entry first.
		if len(top) > 0 && top[0].Confidence >= a.faq.Threshold() {
			ans.Text, ans.Source = top[0].Answer, peakdesk.SourceFAQ
			return ans
		}
		if a.cfg.FAQContext <= 0 {
			if m, ok := a.faq.Search(ctx, t.req.Shop, t.question); ok {
				ans.Text, ans.Source = m.Answer, peakdesk.SourceFAQ
				return ans
			}
		}
		if oa != nil {
			return withCosts(oa, ans)
		}
	}

	// 3. A human.
	ans.Text, ans.Source, ans.Handoff = handoffText(t.req.Question, route.lang), peakdesk.SourceHandoff, true
	return ans
}

// withCosts gives the order answer oa what the model chain cost and did
// before it (ans).
func withCosts(oa, ans *Answer) *Answer {
	oa.Model, oa.PromptTokens, oa.CompletionTokens, oa.CostMicroUSD = ans.Model, ans.PromptTokens,
		ans.CompletionTokens, ans.CostMicroUSD
	oa.StreamBroken, oa.Capped = ans.StreamBroken, ans.Capped
	oa.Masked = addCounts(ans.Masked, oa.Masked)
	return oa
}

// prompt builds the turns sent to the LLM: the system message (the shop's
// own, else the configured one) with the FAQ context, the history, the
// question.
func (a *Answerer) prompt(t turn, system string, top []faq.Match) []llm.Turn {
	var sys strings.Builder
	sys.WriteString(strings.ReplaceAll(cmp.Or(system, a.cfg.SystemPrompt), "{shop}", t.req.Shop))
	if len(top) > 0 {
		sys.WriteString("\n\nEntries of the shop's FAQ that may help (use them when they answer the question):")
		for _, m := range top {
			sys.WriteString("\nQ: ")
			sys.WriteString(m.Question)
			sys.WriteString("\nA: ")
			sys.WriteString(m.Answer)
		}
	}
	turns := make([]llm.Turn, 0, len(t.history)+2)
	turns = append(turns, llm.Turn{Role: llm.RoleSystem, Text: sys.String()})
	turns = append(turns, t.history...)
	return append(turns, llm.Turn{Role: llm.RoleUser, Text: t.question})
}

// cost prices c by the model asked, or by the model that answered (a
// provider may answer with a dated variant of the name).
func (a *Answerer) cost(asked string, c *llm.Completion) int64 {
	if cost, ok := a.cfg.Prices.CostMicroUSD(asked, c.PromptTokens, c.CompletionTokens); ok {
		return cost
	}
	if cost, ok := a.cfg.Prices.CostMicroUSD(c.Model, c.PromptTokens, c.CompletionTokens); ok {
		return cost
	}
	if _, seen := a.unpriced.LoadOrStore(asked, true); !seen {
		a.log.Warn("model missing from the price table; its answers are accounted at 0", "model", asked)
	}
	return 0
}

// audit writes the PII audit record of an answer that masked anything. It
// outlives a cancelled request: the masking happened.
func (a *Answerer) audit(ctx context.Context, log *slog.Logger, req Request, counts map[string]int) {
	if len(counts) == 0 {
		return
	}
	for kind, n := range counts {
		a.metrics.masked.WithLabelValues(kind).Add(float64(n))
	}
	if len(req.MessageIDs) == 0 {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	err := a.cfg.DB.RecordPIIAudit(actx, storage.PIIAudit{ShopID: req.Shop, ConversationID: req.ConversationID,
		MessageIDs: req.MessageIDs, Counts: counts})
	if err != nil {
		log.Error("pii audit record not written", "err", err)
	}
}

func (a *Answerer) observe(req Request, ans *Answer, took time.Duration) {
	a.metrics.latency.WithLabelValues(ans.Source).Observe(took.Seconds())
	if ans.Source != peakdesk.SourceLLM {
		a.metrics.fallbacks.WithLabelValues(ans.Source).Inc()
	}
	if ans.PromptTokens > 0 || ans.CompletionTokens > 0 {
		a.metrics.tokens.WithLabelValues(ans.Model, "prompt").Add(float64(ans.PromptTokens))
		a.metrics.tokens.WithLabelValues(ans.Model, "completion").Add(float64(ans.CompletionTokens))
	}
	if ans.CostMicroUSD > 0 {
		a.metrics.spend.WithLabelValues(req.Shop).Add(float64(ans.CostMicroUSD) / 1e6)
	}
}

func addCounts(a, b map[string]int) map[string]int {
	if len(a) == 0 {
		return b
	}
	out := make(map[string]int, len(a)+len(b))
	for k, v := range a {
		out[k] += v
	}
	for k, v := range b {
		out[k] += v
	}
	return out
}
