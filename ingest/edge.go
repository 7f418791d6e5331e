// Package ingest is peakdesk's HTTP edge: it authenticates, validates and
// classifies chat messages, publishes them durably to JetStream and delivers
// replies back by polling, waiting and server-sent events.
package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// Config configures the Edge. DB, JS and Secret are required.
type Config struct {
	// Secret is the platform key (PEAKDESK_JWT_SECRET): it verifies tokens
	// without a kid and signs message and conversation ids.
	Secret []byte
	// PreviousSecrets are earlier platform keys: they still verify tokens
	// and ids, so rotating the platform key breaks neither.
	PreviousSecrets [][]byte
	// Auth checks bearer tokens; default an Authenticator for Secret,
	// PreviousSecrets and the shop keys in DB. Pass one to share its caches
	// with other handlers of the process.
	Auth *token.Authenticator
	DB   *storage.DB
	// Redis caches the state of queued messages for GET; optional.
	Redis *redis.Client
	JS    jetstream.JetStream
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the edge's metrics; defaults to a private registry.
	Registerer prometheus.Registerer
	// Rules classify messages; defaults to DefaultRules.
	Rules []Rule
	// MaxWait caps ?wait=. Default 10 s.
	MaxWait time.Duration
	// PublishTimeout bounds one JetStream publish. Default 5 s.
	PublishTimeout time.Duration
	// SSEHeartbeat is the interval of keep-alive comments on event streams.
	// Default 15 s.
	SSEHeartbeat time.Duration
	// Limits are the default request limits of shops without their own.
	Limits Limits
	// Admission sets when the edge sheds load.
	Admission AdmissionConfig
	// BatchPublish gathers concurrent publishes into atomic batches (group
	// commit); use it when JetStream fsyncs every write (sync_interval:
	// always). Otherwise publishes are pipelined asynchronously.
	BatchPublish bool
	// MaxBatch caps an atomic batch. Default 256.
	MaxBatch int
	// MaxPending caps asynchronous publishes in flight. Default 8192.
	MaxPending int
	// FAQ answers shed messages instantly when it is confident; optional.
	// Its answers are cached (FAQCacheTTL, FAQCacheSize) and its searches
	// bounded (FAQConcurrency); the answers are published to CHAT_IN for
	// the shed writer (workers/shedwriter) to store.
	FAQ FAQ
	// FAQCacheTTL is how long an FAQ answer (or the lack of one) to a
	// normalised question is reused for shed messages. Default 2 s, so an
	// edit of the shop's FAQ reaches shed answers as soon as it reaches
	// the FAQ engine.
	FAQCacheTTL time.Duration
	// FAQCacheSize caps the cached questions. Default 20,000.
	FAQCacheSize int
	// FAQConcurrency caps FAQ searches running at once; more wait their
	// turn. Default GOMAXPROCS.
	FAQConcurrency int
	// Orders takes shed order questions (outbox.Tools): "checking" at once
	// and a follow-up that pushes the facts; optional.
	Orders ShedOrders
	// MaxInFlight caps the requests this process handles at once, event
	// streams aside (MaxStreams caps those); one more is answered 503
	// overloaded at once, so a burst never queues unbounded work here.
	// Default 4,096.
	MaxInFlight int
	// MaxStreams caps the event streams open on this process at once; one
	// more is answered 429. Default 10,000.
	MaxStreams int
	// StreamOpens is how many event stream opens are set up at once; more
	// wait their turn, so a reconnect storm queues instead of failing.
	// Default 64.
	StreamOpens int
	// StreamOpenWait is how long an open may wait for its turn (at most
	// MaxStreams wait) before it is answered 503 with Retry-After.
	// Default 10 s.
	StreamOpenWait time.Duration
	// StreamBacklog bounds the bytes of events queued for one stream whose
	// client does not keep up; beyond it the stream is cut and the client
	// reconnects with its last event id. Default 256 KiB.
	StreamBacklog int
	// StreamWriteTimeout bounds one write to an event stream. Default 10 s.
	StreamWriteTimeout time.Duration
	// StreamTokenTTL is how long a stream token (POST /v1/stream-tokens)
	// opens streams. Default 60 s.
	StreamTokenTTL time.Duration
	// DevOrigins are web origins whose pages may call the API for every
	// shop (dev mode), beside each shop's allowed origins.
	DevOrigins []string
}

// ShedOrders answers an order question the edge sheds: the reply's text
// and the actions it promises (an order follow-up), or ok false when m is
// not an order question. It must not wait on the shop.
type ShedOrders interface {
	ShedOrder(ctx context.Context, m *peakdesk.Message) (text string, actions []peakdesk.Action, ok bool, err error)
}

// FAQ answers a question from a shop's FAQ when it is confident enough.
type FAQ interface {
	Answer(ctx context.Context, shop, question string) (answer string, ok bool)
}

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Rules == nil {
		c.Rules = DefaultRules
	}
	c.MaxWait = cmp.Or(c.MaxWait, 10*time.Second)
	c.PublishTimeout = cmp.Or(c.PublishTimeout, 5*time.Second)
	c.SSEHeartbeat = cmp.Or(c.SSEHeartbeat, 15*time.Second)
	if c.Limits == (Limits{}) {
		c.Limits = DefaultLimits
	}
	c.MaxBatch = cmp.Or(c.MaxBatch, 256)
	c.MaxPending = cmp.Or(c.MaxPending, 8192)
	c.MaxStreams = cmp.Or(c.MaxStreams, 10_000)
	c.FAQCacheTTL = cmp.Or(c.FAQCacheTTL, 2*time.Second)
	c.FAQCacheSize = cmp.Or(c.FAQCacheSize, 20_000)
	c.FAQConcurrency = cmp.Or(c.FAQConcurrency, runtime.GOMAXPROCS(0))
	c.MaxInFlight = cmp.Or(c.MaxInFlight, 4096)
	c.StreamOpens = cmp.Or(c.StreamOpens, 64)
	c.StreamOpenWait = cmp.Or(c.StreamOpenWait, 10*time.Second)
	c.StreamBacklog = cmp.Or(c.StreamBacklog, 256<<10)
	c.StreamWriteTimeout = cmp.Or(c.StreamWriteTimeout, 10*time.Second)
	c.StreamTokenTTL = cmp.Or(c.StreamTokenTTL, 60*time.Second)
}

func (c *Config) validate() error {
	switch {
	case len(c.Secret) == 0:
		return errors.New("ingest: config: Secret is required")
	case c.DB == nil:
		return errors.New("ingest: config: DB is required")
	case c.JS == nil:
		return errors.New("ingest: config: JS is required")
	case c.MaxStreams < 0:
		return errors.New("ingest: config: MaxStreams must not be negative")
	case c.MaxInFlight < 0:
		return errors.New("ingest: config: MaxInFlight must not be negative")
	case c.FAQCacheSize < 0 || c.FAQConcurrency < 0 || c.FAQCacheTTL < 0:
		return errors.New("ingest: config: FAQCacheTTL, FAQCacheSize and FAQConcurrency must not be negative")
	case c.StreamOpens < 0 || c.StreamOpenWait < 0 || c.StreamBacklog < 0 || c.StreamWriteTimeout < 0 || c.StreamTokenTTL < 0:
		return errors.New("ingest: config: StreamOpens, StreamOpenWait, StreamBacklog, StreamWriteTimeout and StreamTokenTTL must not be negative")
	}
	for _, o := range c.DevOrigins {
		if n, err := peakdesk.NormalizeOrigin(o); err != nil || n != o {
			return fmt.Errorf("ingest: config: DevOrigins: %q is not a normalized web origin", o)
		}
	}
	return nil
}

// Edge serves the chat API of docs/api.md.
type Edge struct {
	cfg     Config
	log     *slog.Logger
	auth    *token.Authenticator
	ids     idSigner
	metrics *edgeMetrics
	hub     *replyHub
	shops   *shopDirectory
	limiter *rateLimiter
	admit   *admission
	pub     publisher
	queuedW *queuedWriter
	faq     *faqAnswers
	humans  *humanOwners // conversations human agents own, for shedding
	// inflight holds a token per request being handled (MaxInFlight).
	inflight chan struct{}
	events   jetstream.Stream // CHAT_EVENTS, for replay by direct get
	push     pushState

	stopOnce    sync.Once
	closeOnce   sync.Once
	closing     chan struct{} // closed by CloseStreams: event streams end
	streamsMu   sync.Mutex    // orders streams.Add before CloseStreams' Wait
	closed      bool
	streams     sync.WaitGroup
	openStreams int            // event streams open on this process
	userStreams map[string]int // of them, by shop and user
}

// New returns an Edge for cfg.
func New(cfg Config) (*Edge, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newEdgeMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("ingest: metrics: %w", err)
	}
	pm, err := newPushMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("ingest: metrics: %w", err)
	}
	auth := cfg.Auth
	if auth == nil {
		if auth, err = token.NewShopAuthenticator(token.Config{Secret: cfg.Secret, PreviousSecrets: cfg.PreviousSecrets,
			DB: cfg.DB}); err != nil {
			return nil, err
		}
	}
	return &Edge{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "ingest"),
		auth:    auth,
		ids:     newIDSigner(cfg.Secret, cfg.PreviousSecrets...),
		metrics: m,
		hub:     newReplyHub(cfg.SSEHeartbeat, pm),
		shops: &shopDirectory{db: cfg.DB, defaults: cfg.Limits, rules: cfg.Rules, ttl: 30 * time.Second,
			entries: map[string]shopEntry{}},
		limiter: newRateLimiter(cfg.Redis, m.rateFallbacks, m.rateDegraded),
		admit:   newAdmission(cfg.Admission, cfg.JS, m),
		closing: make(chan struct{}),
		push: pushState{
			metrics: pm,
			gate:    newOpenGate(cfg.StreamOpens, cfg.MaxStreams, cfg.StreamOpenWait, pm),
			owners:  &ownerCache{db: cfg.DB, max: 100_000, m: map[string]string{}},
			tokens:  newStreamTokens(cfg.StreamTokenTTL, cfg.Secret, cfg.PreviousSecrets...),
			origins: newOriginPolicy(cfg.DB, cfg.DevOrigins),
			watcher: connWatcher{fallbacks: pm.watchFallbacks},
		},

		faq:      newFAQAnswers(cfg.FAQ, cfg.FAQCacheTTL, cfg.FAQCacheSize, cfg.FAQConcurrency, m),
		humans:   newHumanOwners(cfg.DB, cfg.Logger.With("component", "ingest")),
		inflight: make(chan struct{}, cfg.MaxInFlight),

		userStreams: map[string]int{},
	}, nil
}

// Start begins reading reply events for waiting requests and event streams.
// It returns once the reader is in place.
func (e *Edge) Start(ctx context.Context) error {
	var err error
	if e.events, err = e.cfg.JS.Stream(ctx, queue.StreamEvents); err != nil {
		return fmt.Errorf("ingest: start: %w", err)
	}
	// The edge's own JetStream context bounds its asynchronous publishes.
	js, err := jetstream.New(e.cfg.JS.Conn(),
		jetstream.WithPublishAsyncMaxPending(e.cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(e.cfg.PublishTimeout))
	if err != nil {
		return fmt.Errorf("ingest: start: %w", err)
	}
	if e.cfg.BatchPublish {
		e.pub = newBatchPublisher(js, e.cfg.MaxBatch, 2)
	} else {
		e.pub = asyncPublisher{js: js}
	}
	if err := e.hub.start(ctx, e.cfg.JS, e.events); err != nil {
		e.pub.stop()
		return fmt.Errorf("ingest: start: %w", err)
	}
	e.queuedW = newQueuedWriter(e.cfg.Redis, e.metrics.redisErrors)
	if err := e.metrics.bindBounds(e.cfg.Registerer, e); err != nil {
		e.queuedW.stop()
		e.hub.stop()
		e.pub.stop()
		return fmt.Errorf("ingest: start: metrics: %w", err)
	}
	e.admit.start()
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	e.humans.start(hctx)
	cancel()
	return nil
}

// Stop ends event streams, then stops publishing and the background work.
// Call it after the HTTP server has shut down, so requests in flight finish
// their publishes. It is idempotent.
func (e *Edge) Stop() {
	e.stopOnce.Do(func() {
		e.CloseStreams()
		if e.pub != nil {
			e.pub.stop()
		}
		e.hub.stop()
		e.admit.stop()
		e.humans.stop()
		e.limiter.close()
		if e.queuedW != nil {
			e.queuedW.stop()
		}
	})
}

// ForgetShop drops what the edge cached of shop's settings (every shop's
// for ""): they changed. Subscribe it to the settings notifications
// (storage/shopwatch).
func (e *Edge) ForgetShop(shop string) { e.shops.forget(shop) }

// Register mounts the edge's routes on mux.
func (e *Edge) Register(mux *http.ServeMux) {
	mux.Handle("POST /v1/messages", e.instrument("post_message", e.postMessage))
	mux.Handle("POST /v1/messages:batch", e.instrument("post_batch", e.postBatch))
	mux.Handle("GET /v1/messages/{id}", e.instrument("get_message", e.getMessage))
	mux.Handle("GET /v1/conversations/{id}", e.instrument("get_conversation", e.getConversation))
	e.registerPush(mux)
}

// handlerFunc is an HTTP handler that returns its error for instrument to
// write in the error format.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (e *Edge) instrument(route string, h handlerFunc) http.Handler {
	// MaxStreams bounds the event streams.
	bounded := route != "events" && route != "conversation_events"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace := peakdesk.ContinueTrace(r.Header.Get(peakdesk.TraceHeader))
		r = r.WithContext(peakdesk.WithTrace(r.Context(), trace))
		w.Header().Set(peakdesk.TraceHeader, trace.Parent)
		start := time.Now()
		// The origin check comes first, so that a 503 of a busy edge
		// carries the CORS headers a browser needs to read it.
		err := e.crossOrigin(w, r, route)
		switch {
		case err != nil:
		case !bounded:
			err = h(w, r)
		default:
			if err = e.enter(route); err == nil {
				func() {
					defer func() { <-e.inflight }()
					err = h(w, r)
				}()
			}
		}
		if err != nil {
			httpjson.WriteError(w, r, e.log.With("trace_id", trace.ID), err)
		}
		code := cmp.Or(peakdesk.ErrorCode(err), "ok")
		e.metrics.requests.WithLabelValues(route, code).Inc()
		e.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// enter takes an in-flight slot for a request, or refuses it with 503 when
// MaxInFlight requests are being handled.
func (e *Edge) enter(route string) error {
	select {
	case e.inflight <- struct{}{}:
		return nil
	default:
		e.metrics.inflightRefusals.WithLabelValues(route).Inc()
		return &peakdesk.Error{Code: peakdesk.EOverloaded, RetryAfter: time.Second,
			Message: "this server is handling too many requests, retry shortly"}
	}
}

// accepted is the answer to POST /v1/messages.
type accepted struct {
	MessageID      string                 `json:"message_id"`
	ConversationID string                 `json:"conversation_id"`
	Priority       peakdesk.Priority      `json:"priority"`
	Status         peakdesk.MessageStatus `json:"status"`
	Reply          *peakdesk.Reply        `json:"reply,omitempty"`
}

func (e *Edge) postMessage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	body, err := httpjson.ReadBody(r, peakdesk.MaxBodyBytes)
	if err != nil {
		return err
	}
	req, err := decodePostRequest(body)
	if err != nil {
		return err
	}
	wait, err := parseWait(r.URL.Query().Get("wait"), e.cfg.MaxWait)
	if err != nil {
		return err
	}
	key, err := idempotencyKey(r.Header.Get("Idempotency-Key"), req.ClientMsgID)
	if err != nil {
		return err
	}
	if _, err := actingUser(claims, req); err != nil {
		return err
	}
	info, err := e.postingShop(ctx, claims)
	if err != nil {
		return err
	}
	res, err := e.acceptMessage(ctx, claims, info, req, key, wait)
	if err != nil {
		return err
	}
	status := http.StatusAccepted
	if res.Status == peakdesk.StatusAnswered {
		status = http.StatusOK
	}
	httpjson.WriteJSON(w, status, res)
	return nil
}

// actingUser is the end user a message is posted for: the token's subject,
// or the body's user_id when a service token names one.
func actingUser(claims *token.Claims, req *postRequest) (string, error) {
	if req.UserID == "" || req.UserID == claims.Subject {
		return claims.Subject, nil
	}
	if !claims.HasScope(token.ScopeService) {
		return "", &peakdesk.Error{Code: peakdesk.EPermissionDenied, Field: "user_id",
			Message: "user_id may differ from the token subject only with the service scope"}
	}
	return req.UserID, nil
}

// postingShop returns the shop the caller posts to, if it may post at all.
func (e *Edge) postingShop(ctx context.Context, claims *token.Claims) (*shopInfo, error) {
	if claims.Shop == "*" {
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "operator tokens cannot post messages")
	}
	info, err := e.shops.lookup(ctx, claims.Shop)
	if err != nil {
		return nil, err
	}
	if !info.exists {
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "shop is not provisioned")
	}
	return info, nil
}

// acceptMessage takes one validated message through the rate limits,
// classification and admission control into CHAT_IN. It returns the
// message's result — queued, or answered when a shed message got an instant
// FAQ answer or the reply came within wait — or the coded error to answer.
func (e *Edge) acceptMessage(ctx context.Context, claims *token.Claims, info *shopInfo, req *postRequest, key string, wait time.Duration) (_ accepted, err error) {
	shop := claims.Shop
	user, err := actingUser(claims, req)
	if err != nil {
		return accepted{}, err
	}
	if err := e.limiter.allow(ctx, shop, user, info.limits); err != nil {
		return accepted{}, err
	}

	conv := req.ConversationID
	if conv == "" {
		conv = e.ids.New("conv", shop, user, key)
	} else if err := e.checkConversation(ctx, shop, user, conv); err != nil {
		return accepted{}, err
	}
	prio, giveP0, err := e.priority(ctx, claims, user, req, info)
	if err != nil {
		return accepted{}, err
	}
	// A keyword-p0 count is kept only if this call queues a new message:
	// not when it is shed, fails or repeats an earlier one.
	keptP0 := false
	if giveP0 != nil {
		defer func() {
			if !keptP0 {
				giveP0()
			}
		}()
	}
	m := &peakdesk.Message{
		ID:             e.ids.New("msg", shop, user, key),
		ShopID:         shop,
		ConversationID: conv,
		UserID:         user,
		Text:           req.Text,
		Channel:        req.Channel,
		Priority:       prio,
		ClientMsgID:    key,
		Metadata:       req.Metadata,
		AcceptedAt:     time.Now().UTC(),
	}
	// Shed load lowest priority first: an order question is told "checking"
	// and followed up from the shop's data, a question the FAQ knows gets
	// its answer at once, else 429 with the time the backlog needs to drain.
	// Not in a conversation a human agent owns (see human.go): its message
	// is queued for the agent — the bot says nothing there.
	forAgent := false
	if retry, ok := e.admit.check(prio, info.admission); !ok {
		if req.ConversationID == "" {
			return e.shed(ctx, m, key, retry) // a new conversation is the bot's
		}
		switch human, known := e.humans.owns(shop, conv); {
		case !known:
			return e.refuse(ctx, m, key, retry, "unknown_owner")
		case !human:
			return e.shed(ctx, m, key, retry)
		}
		// Queued without waiting for a reply: an agent's may take long, and
		// the desk is overloaded.
		forAgent, wait = true, 0
		defer func() {
			if err != nil && peakdesk.ErrorCode(err) == peakdesk.EOverloaded {
				// The queue refused it too: retry later, as any shed message.
				err = &peakdesk.Error{Code: peakdesk.ERateLimited, RetryAfter: retry,
					Message: "the desk is very busy right now, retry later"}
			}
		}()
	}
	// Listen for the reply before publishing, so it cannot slip past.
	var replies <-chan *peakdesk.Reply
	if wait > 0 {
		ch, cancel := e.hub.wait(m.ID)
		defer cancel()
		replies = ch
	}
	duplicate, err := e.publish(ctx, m)
	if err != nil {
		return accepted{}, err
	}
	keptP0 = !duplicate
	e.metrics.accepted.WithLabelValues(string(prio)).Inc()
	if forAgent && !duplicate {
		e.metrics.shed.WithLabelValues(string(prio), "human").Inc()
	}
	if !duplicate {
		e.rememberQueued(ctx, m)
	} else if st, ok := e.knownMessage(ctx, m); ok {
		// A repeat: its first result stands — the answer it got when it
		// was shed, too — and so does what the edge remembers of it.
		if st.Status == peakdesk.StatusAnswered {
			return stateResult(m.ID, st), nil
		}
	} else {
		e.rememberQueued(ctx, m)
	}

	res := accepted{MessageID: m.ID, ConversationID: conv, Priority: prio, Status: peakdesk.StatusQueued}
	if wait > 0 {
		if reply := e.awaitReply(ctx, replies, wait, shop, m.ID); reply != nil {
			res.Status, res.Reply = peakdesk.StatusAnswered, reply
		}
	}
	return res, nil
}

// priority classifies the message and applies the client's hint: a hint can
// raise the priority, never lower it below what the shop's rules say, and a
// p0 or p1 hint needs the priority:urgent scope. p0 from keywords is capped
// per user (the shop's p0_per_user_per_hour; beyond it, p1) so a customer
// cannot buy the front of the queue with a word; p0 from a hint is the
// scope's, not capped. When the message keeps a keyword p0, give must be
// called if it is not accepted after all.
func (e *Edge) priority(ctx context.Context, claims *token.Claims, user string, req *postRequest, info *shopInfo) (prio peakdesk.Priority, give func(), err error) {
	prio = Classify(info.rules, req.Text)
	hint := peakdesk.P2 // no hint raises nothing
	if req.Priority != "" {
		if hint, err = peakdesk.ParsePriority(req.Priority); err != nil {
			return "", nil, err
		}
		if hint.Rank() <= peakdesk.P1.Rank() && !claims.HasScope(token.ScopeUrgent) {
			return "", nil, &peakdesk.Error{Code: peakdesk.EPermissionDenied, Field: "priority",
				Message: fmt.Sprintf("priority %s needs the priority:urgent scope", hint)}
		}
		if hint == peakdesk.P0 {
			return peakdesk.P0, nil, nil
		}
	}
	if prio == peakdesk.P0 {
		var ok bool
		if give, ok = e.limiter.takeP0(ctx, claims.Shop, user, info.abuse.P0PerUserPerHour); ok {
			return peakdesk.P0, give, nil
		}
		prio = peakdesk.P1
		e.metrics.p0Capped.Inc()
	}
	if hint.Rank() < prio.Rank() {
		prio = hint
	}
	return prio, nil, nil
}

// publish stores m in CHAT_IN and returns once JetStream has acked it. It
// reports whether JetStream had it already (a repeat of its idempotency key).
func (e *Edge) publish(ctx context.Context, m *peakdesk.Message) (duplicate bool, err error) {
	data, err := json.Marshal(m)
	if err != nil {
		return false, fmt.Errorf("ingest: encode message: %w", err)
	}
	msg := nats.NewMsg(queue.InSubject(m.Priority, m.ShopID))
	msg.Data = data
	msg.Header.Set(peakdesk.TraceHeader, peakdesk.TraceFrom(ctx).Parent)
	msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	return e.publishMsg(ctx, msg, m)
}

// publishMsg publishes msg, which carries message m or its shed answer, to
// CHAT_IN and returns once JetStream has acked it.
func (e *Edge) publishMsg(ctx context.Context, msg *nats.Msg, m *peakdesk.Message) (duplicate bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.PublishTimeout)
	defer cancel()
	start := time.Now()
	e.metrics.publishInflight.Inc()
	duplicate, err = e.pub.publish(ctx, msg)
	e.metrics.publishInflight.Dec()
	e.metrics.publish.Observe(time.Since(start).Seconds())
	if err != nil {
		// The message may or may not be stored; either way the client is
		// told to retry, and a retry with its idempotency key is safe.
		e.log.WarnContext(ctx, "publish failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "shop", m.ShopID,
			"message_id", m.ID, "err", err)
		return false, &peakdesk.Error{Code: peakdesk.EOverloaded, Message: "the message queue is unavailable or full, retry later",
			RetryAfter: time.Second}
	}
	if duplicate {
		// A repeat within the duplicate window: its id is derived from the
		// idempotency key, so the caller gets the first message's id.
		e.metrics.duplicates.Inc()
	}
	return duplicate, nil
}

// queuedState is what the edge remembers in Redis about a message it
// published, so GET can describe it before a worker stores it: the message,
// and for a shed message the answer it got.
type queuedState struct {
	Shop     string            `json:"s"`
	User     string            `json:"u"`
	Conv     string            `json:"c"`
	Priority peakdesk.Priority `json:"p"`
	Reply    *peakdesk.Reply   `json:"r,omitempty"`
}

// state is the message state q describes.
func (q queuedState) state(id string) peakdesk.MessageState {
	st := peakdesk.MessageState{ID: id, ConversationID: q.Conv, Priority: q.Priority, Status: peakdesk.StatusQueued}
	if q.Reply != nil {
		st.Status, st.Reply = peakdesk.StatusAnswered, q.Reply
	}
	return st
}

func queuedKey(id string) string { return "pd:queued:" + id }

func (e *Edge) rememberQueued(_ context.Context, m *peakdesk.Message) {
	b, _ := json.Marshal(queuedState{Shop: m.ShopID, User: m.UserID, Conv: m.ConversationID, Priority: m.Priority})
	e.queuedW.add(queuedKey(m.ID), b)
}

// remember records shed message m's answer r, for GET until the shed
// writer has stored it; it returns once Redis has it (or after a short
// bound).
func (e *Edge) remember(ctx context.Context, m *peakdesk.Message, r *peakdesk.Reply) {
	b, _ := json.Marshal(queuedState{Shop: m.ShopID, User: m.UserID, Conv: m.ConversationID, Priority: m.Priority, Reply: r})
	e.queuedW.addWait(ctx, queuedKey(m.ID), b)
}

// awaitReply waits up to d for the reply to message id, then looks in
// Postgres once more in case the event went by unseen.
func (e *Edge) awaitReply(ctx context.Context, replies <-chan *peakdesk.Reply, d time.Duration, shop, id string) *peakdesk.Reply {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-replies:
		return r
	case <-t.C:
	case <-ctx.Done():
		return nil
	}
	r, err := e.cfg.DB.ReplyFor(ctx, shop, id)
	if err != nil {
		return nil
	}
	return r
}

func (e *Edge) getMessage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, "get_message", claims, ""); err != nil {
		return err
	}
	id := r.PathValue("id")
	notFound := peakdesk.Errorf(peakdesk.ENotFound, "message not found")
	if !isHexID(id) {
		return notFound
	}
	rec, err := e.cfg.DB.Message(ctx, claims.Shop, id)
	switch {
	case err == nil:
		if !mayRead(claims, rec.UserID) {
			return notFound
		}
		if err := e.chargeRead(ctx, "get_message", claims, rec.UserID); err != nil {
			return err
		}
		httpjson.WriteJSON(w, http.StatusOK, rec.MessageState)
		return nil
	case !errors.Is(err, storage.ErrNotFound):
		return err
	}
	// Not stored yet: is it a message this edge queued (or answered when
	// shedding) for this caller?
	state := peakdesk.MessageState{ID: id, Status: peakdesk.StatusQueued}
	owner := claims.Subject
	if q, ok := e.queued(ctx, id); ok && q.Shop == claims.Shop && mayRead(claims, q.User) {
		state, owner = q.state(id), q.User
	} else if !e.ids.Valid("msg", claims.Shop, claims.Subject, id) {
		return notFound
	}
	if err := e.chargeRead(ctx, "get_message", claims, owner); err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, state)
	return nil
}

// chargeRead counts a read (a GET, an event stream opened) against the
// read limit of the customer whose data it is. An end user's token is
// charged before anything is looked up (owner ""); a service or agent
// token — a gateway or an agent reading for many customers — is charged
// per customer, once the owner of the data is known. The other call is a
// no-op.
func (e *Edge) chargeRead(ctx context.Context, route string, claims *token.Claims, owner string) error {
	user := owner
	switch service := readsForOthers(claims); {
	case !service && owner == "":
		user = claims.Subject
	case service != (owner != ""):
		return nil
	}
	if err := e.limiter.allowRead(ctx, claims.Shop, user, e.edgeLimits(ctx, claims.Shop).ReadPerUserPerMinute); err != nil {
		e.metrics.readRefusals.WithLabelValues(route, "read_limit").Inc()
		return err
	}
	return nil
}

// edgeLimits returns shop's abuse limits, or the defaults for a shop the
// edge cannot look up (which then has no data to read anyway).
func (e *Edge) edgeLimits(ctx context.Context, shop string) storage.EdgeLimits {
	if info, err := e.shops.lookup(ctx, shop); err == nil && info.exists {
		return info.abuse
	}
	return storage.DefaultEdgeLimits
}

// knownMessage returns the state of message m if the edge accepted it
// before, or answered it when shedding. It asks the queued-state cache
// first, which knows every message an edge took (best effort), so an
// unknown message — the common case while shedding — costs one Redis
// read, not a Postgres query; a known one is then read from Postgres for
// its latest state.
func (e *Edge) knownMessage(ctx context.Context, m *peakdesk.Message) (peakdesk.MessageState, bool) {
	q, ok := e.queued(ctx, m.ID)
	if !ok || q.Shop != m.ShopID || q.User != m.UserID {
		return peakdesk.MessageState{}, false
	}
	if rec, err := e.cfg.DB.Message(ctx, m.ShopID, m.ID); err == nil && rec.UserID == m.UserID {
		return rec.MessageState, true
	}
	return q.state(m.ID), true
}

func (e *Edge) queued(ctx context.Context, id string) (queuedState, bool) {
	var q queuedState
	if e.cfg.Redis == nil {
		return q, false
	}
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	b, err := e.cfg.Redis.Get(ctx, queuedKey(id)).Bytes()
	if err != nil || json.Unmarshal(b, &q) != nil {
		return q, false
	}
	return q, true
}

// mayRead reports whether the caller may read data of end user owner in the
// caller's shop: the user themself, or a service or an agent of the shop.
func mayRead(c *token.Claims, owner string) bool {
	return c.Subject == owner || readsForOthers(c)
}

// readsForOthers reports whether the caller reads many customers' data: a
// service (a chat gateway) or a human agent of the shop.
func readsForOthers(c *token.Claims) bool {
	return c.HasScope(token.ScopeService) || c.HasScope(token.ScopeAgent)
}

// checkConversation makes sure conversation conv may take a message from
// user in shop: either the edge issued it to them, or it is stored as theirs.
func (e *Edge) checkConversation(ctx context.Context, shop, user, conv string) error {
	if e.ids.Valid("conv", shop, user, conv) {
		return nil
	}
	owner, err := e.cfg.DB.ConversationOwner(ctx, shop, conv)
	switch {
	case errors.Is(err, storage.ErrNotFound) || (err == nil && owner != user):
		return &peakdesk.Error{Code: peakdesk.ENotFound, Field: "conversation_id", Message: "conversation not found"}
	case err != nil:
		return err
	}
	return nil
}

// readableConversation returns the stored conversation conv if the caller
// may read it, an empty one if the edge issued it to the caller and nothing
// is stored yet, or not_found.
func (e *Edge) readableConversation(ctx context.Context, claims *token.Claims, conv string) (*peakdesk.Conversation, error) {
	notFound := peakdesk.Errorf(peakdesk.ENotFound, "conversation not found")
	if !isHexID(conv) {
		return nil, notFound
	}
	c, err := e.cfg.DB.Conversation(ctx, claims.Shop, conv)
	switch {
	case err == nil:
		if !mayRead(claims, c.UserID) {
			return nil, notFound
		}
		return c, nil
	case !errors.Is(err, storage.ErrNotFound):
		return nil, err
	case e.ids.Valid("conv", claims.Shop, claims.Subject, conv):
		return &peakdesk.Conversation{ID: conv, UserID: claims.Subject,
			Messages: []peakdesk.MessageState{}, Replies: []peakdesk.Reply{}}, nil
	}
	return nil, notFound
}

func (e *Edge) getConversation(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, "get_conversation", claims, ""); err != nil {
		return err
	}
	c, err := e.readableConversation(ctx, claims, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, "get_conversation", claims, c.UserID); err != nil {
		return err
	}
	if !readsForOthers(claims) {
		// Who the agent is (an operator's login) is not the customer's
		// business; replies carry the agent's name.
		c.Agent = ""
	}
	httpjson.WriteJSON(w, http.StatusOK, c)
	return nil
}

// parseWait reads ?wait=: a Go duration ("2s") or seconds ("2"), up to max.
func parseWait(s string, limit time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, peakdesk.FieldError("wait", "wait must be a duration such as 5s")
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d < 0 || d > limit {
		return 0, peakdesk.FieldError("wait", "wait must be between 0s and %s", limit)
	}
	return d, nil
}

// idempotencyKey returns the request's idempotency key: the header, or
// client_msg_id; when both are given they must agree.
func idempotencyKey(header, clientMsgID string) (string, error) {
	header = strings.TrimSpace(header)
	switch {
	case header != "" && !printableASCII(header, maxKeyLen):
		return "", peakdesk.FieldError("Idempotency-Key", "Idempotency-Key must be 1..%d printable ASCII characters", maxKeyLen)
	case header != "" && clientMsgID != "" && header != clientMsgID:
		return "", peakdesk.FieldError("client_msg_id", "client_msg_id and Idempotency-Key differ")
	}
	return cmp.Or(header, clientMsgID), nil
}
