// Package dashboard is the operator console, the `dashboard` role
// (docs/operations.md): server-rendered pages in Chinese and English where the
// people who run a shop's customer service watch the desk live, find and
// retry or cancel outbox actions (one, or every match of a filter after
// confirming the count), re-drive or discard dead chat messages, follow a
// conversation from message to refund, and read the audit log.
//
// Operators log in with e-mail and password (argon2id); sessions live in
// Postgres (scs), expire after an idle timeout and an absolute lifetime,
// and every state-changing request passes Go's cross-origin protection.
// A viewer only looks; a shop's operator sees only that shop. Every change
// goes through the operations layer (outbox.Ops, outbox.DLQOps), which
// writes the audit log in the same transaction.
//
// The console keeps no state of other roles in memory: it reads Postgres,
// JetStream consumer info and the metric snapshots every process publishes
// to Redis (package snapshot), and samples them itself for its charts.
package dashboard

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/go-redis/redis_rate/v10"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/shopadmin"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

//go:embed templates/*.html
var templateFS embed.FS

// staticFS holds the console's own console.css and console.js and three
// libraries from the npm registry, pinned and committed minified: htmx.org
// 2.0.11 (htmx.min.js), idiomorph 0.8.0 (idiomorph-ext.min.js: htmx's
// "morph" swap, so a live region that is polled keeps its buttons and
// fields as the same elements and a click is never lost to a swap) and
// uplot 1.6.32 (uPlot.iife.min.js, uPlot.min.css), with their licenses.
// To update them:
//
//	npm pack htmx.org@VERSION idiomorph@VERSION uplot@VERSION
//	tar xzf htmx.org-VERSION.tgz package/dist/htmx.min.js  # idiomorph's dist/idiomorph-ext.min.js, uplot's dist/uPlot.iife.min.js, dist/uPlot.min.css
//
// copy the files over the ones here, run the browser tests, and note the
// versions here and in the README. Nothing is fetched at run time.
//
//go:embed static
var staticFS embed.FS

// Prefix is where the console is mounted.
const Prefix = "/console"

// Config configures the console. DB, Redis and JS are required.
type Config struct {
	DB    *storage.DB
	Redis *redis.Client
	JS    jetstream.JetStream
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// Origin is the console's public origin, e.g.
	// https://console.example.com. An https origin makes the session cookie
	// Secure, and the origin is trusted by the cross-origin checks when a
	// proxy in front rewrites the Host header. Empty: the request's own.
	Origin string
	// IdleTimeout ends a session nobody used for this long (the overview's
	// own polling does not count as use). Default 30 min.
	IdleTimeout time.Duration
	// Lifetime ends every session this long after login. Default 12 h.
	Lifetime time.Duration
	// LoginPerEmail and LoginPerIP are the login attempts allowed per
	// minute per e-mail address and per client IP. Defaults 5 and 20.
	LoginPerEmail, LoginPerIP int

	// SampleInterval is how often the console samples the desk for its
	// live view and charts. Default 5 s.
	SampleInterval time.Duration
	// SampleRetention is how long samples are kept. Default 48 h.
	SampleRetention time.Duration
	// PollInterval is how often an open overview refreshes. Default 3 s.
	PollInterval time.Duration

	// LoginKeyPrefix starts the Redis keys of the login rate limits;
	// default "pd:login:".
	LoginKeyPrefix string
	// SnapshotPrefix is where the processes publish their metric snapshots
	// in Redis; default snapshot.DefaultPrefix.
	SnapshotPrefix string

	// Now is the clock of session timeouts and samples. Default time.Now.
	Now func() time.Time

	// Desk is the agents' operations (human takeover), shared with the
	// edge's agent API; default one of the console's own.
	Desk *outbox.Desk
	// AllowPrivateShopURLs lets shop administration accept plain http and
	// private addresses in shop and LLM URLs: development and tests only.
	AllowPrivateShopURLs bool
	// FAQThreshold is the FAQ's answering confidence shown when an admin
	// tries a question. Default faq.DefaultThreshold.
	FAQThreshold float64
}

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	c.IdleTimeout = cmp.Or(c.IdleTimeout, 30*time.Minute)
	c.Lifetime = cmp.Or(c.Lifetime, 12*time.Hour)
	c.LoginPerEmail = cmp.Or(c.LoginPerEmail, 5)
	c.LoginPerIP = cmp.Or(c.LoginPerIP, 20)
	c.SampleInterval = cmp.Or(c.SampleInterval, 5*time.Second)
	c.SampleRetention = cmp.Or(c.SampleRetention, 48*time.Hour)
	c.PollInterval = cmp.Or(c.PollInterval, 3*time.Second)
	c.LoginKeyPrefix = cmp.Or(c.LoginKeyPrefix, "pd:login:")
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	switch {
	case c.DB == nil || c.Redis == nil || c.JS == nil:
		return errors.New("dashboard: config: DB, Redis and JS are required")
	case c.IdleTimeout < 0 || c.Lifetime < c.IdleTimeout:
		return errors.New("dashboard: config: Lifetime must be at least IdleTimeout")
	case c.LoginPerEmail < 1 || c.LoginPerIP < 1:
		return errors.New("dashboard: config: login limits must be at least 1 per minute")
	case c.SampleInterval < 100*time.Millisecond:
		return errors.New("dashboard: config: SampleInterval must be at least 100ms")
	}
	if c.Origin != "" {
		u, err := url.Parse(c.Origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("dashboard: config: Origin %q is not an origin like https://console.example.com", c.Origin)
		}
	}
	return nil
}

// Console is the operator console. Register its handler, then Start it.
type Console struct {
	cfg      Config
	log      *slog.Logger
	sessions *scs.SessionManager
	limiter  *redis_rate.Limiter
	ops      *outbox.Ops
	dlq      *outbox.DLQOps
	desk     *outbox.Desk
	admin    *shopadmin.Admin
	pages    map[string]*template.Template
	sampler  *sampler
	counts   shopCounts
	handler  http.Handler
	// dummyHash is verified against when an e-mail is unknown, so a login
	// takes as long whether or not the operator exists.
	dummyHash string

	stop     context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
	// bg is the context of work a request starts and does not wait for
	// (a shop's counts refreshed in the background); Stop cancels it and
	// waits for that work (background).
	bg       context.Context
	bgCancel context.CancelFunc
	bgMu     sync.Mutex
	stopped  bool
}

// New returns the console for cfg.
func New(cfg Config) (*Console, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger.With("component", "dashboard"), limiter: redis_rate.NewLimiter(cfg.Redis)}
	c.bg, c.bgCancel = context.WithCancel(context.Background())
	var err error
	if c.ops, err = outbox.NewOps(outbox.OpsConfig{DB: cfg.DB, Logger: cfg.Logger, Now: cfg.Now}); err != nil {
		return nil, err
	}
	if c.dlq, err = outbox.NewDLQOps(outbox.DLQOpsConfig{DB: cfg.DB, JS: cfg.JS, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	if c.desk = cfg.Desk; c.desk == nil {
		if c.desk, err = outbox.NewDesk(outbox.DeskConfig{DB: cfg.DB, JS: cfg.JS, Logger: cfg.Logger}); err != nil {
			return nil, err
		}
	}
	if c.admin, err = shopadmin.New(shopadmin.Config{DB: cfg.DB, AllowPrivateURLs: cfg.AllowPrivateShopURLs,
		FAQThreshold: cfg.FAQThreshold, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	if c.dummyHash, err = HashPassword(GeneratePassword()); err != nil {
		return nil, err
	}
	c.sampler = newSampler(&c.cfg, c.log)

	c.sessions = scs.New()
	c.sessions.Store = cfg.DB.SessionStore(0) // the sampler deletes expired sessions
	c.sessions.IdleTimeout = cfg.IdleTimeout
	c.sessions.Lifetime = cfg.Lifetime
	c.sessions.Cookie.Name = "pd_console"
	c.sessions.Cookie.Path = Prefix
	c.sessions.Cookie.HttpOnly = true
	c.sessions.Cookie.SameSite = http.SameSiteLaxMode
	c.sessions.Cookie.Secure = strings.HasPrefix(cfg.Origin, "https://")
	c.sessions.Cookie.Persist = false // gone with the browser
	c.sessions.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		c.log.ErrorContext(r.Context(), "session store", "err", err)
		http.Error(w, "session store unavailable", http.StatusServiceUnavailable)
	}
	c.handler, err = c.routes()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Start takes a first sample and starts sampling. It returns once the
// first sample is taken (a failing source is logged, not fatal).
func (c *Console) Start(ctx context.Context) error {
	ctx, c.stop = context.WithCancel(context.WithoutCancel(ctx))
	c.sampler.sampleOnce(ctx)
	c.wg.Go(func() { c.sampler.run(ctx) })
	c.log.InfoContext(ctx, "operator console started", "path", Prefix+"/")
	return nil
}

// Stop stops sampling and the work requests left running, and waits for
// them. Idempotent.
func (c *Console) Stop() {
	c.stopOnce.Do(func() {
		c.bgMu.Lock()
		c.stopped = true
		c.bgMu.Unlock()
		c.bgCancel()
		if c.stop != nil {
			c.stop()
		}
		c.wg.Wait()
	})
}

// background runs fn, for work a request starts and does not wait for, with
// a context Stop cancels; Stop waits for it. After Stop it runs nothing and
// returns errStopped.
func (c *Console) background(fn func(ctx context.Context) error) error {
	c.bgMu.Lock()
	if c.stopped {
		c.bgMu.Unlock()
		return errStopped
	}
	c.wg.Add(1)
	c.bgMu.Unlock()
	defer c.wg.Done()
	return fn(c.bg)
}

var errStopped = errors.New("dashboard: the console is stopping")

// Handler serves everything under Prefix.
func (c *Console) Handler() http.Handler { return c.handler }

// Register mounts the console on mux under Prefix, and "/" redirects to it.
func (c *Console) Register(mux *http.ServeMux) {
	mux.Handle(Prefix+"/", c.handler)
	mux.Handle("GET "+Prefix, http.RedirectHandler(Prefix+"/", http.StatusMovedPermanently))
	mux.Handle("GET /{$}", http.RedirectHandler(Prefix+"/", http.StatusFound))
}

// routes builds the handler: static files, then cross-origin protection,
// sessions and security headers around the pages.
func (c *Console) routes() (http.Handler, error) {
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	pages := http.NewServeMux()
	pages.HandleFunc("GET "+Prefix+"/login", c.loginPage)
	pages.HandleFunc("POST "+Prefix+"/login", c.login)
	pages.HandleFunc("POST "+Prefix+"/logout", c.logout)
	pages.HandleFunc("GET "+Prefix+"/lang", c.switchLang)

	pages.Handle("GET "+Prefix+"/{$}", c.authed(false, c.home))
	pages.Handle("GET "+Prefix+"/overview/live", c.authed(false, c.overviewLive))
	pages.Handle("GET "+Prefix+"/overview/series", c.authed(false, c.overviewSeries))

	pages.Handle("GET "+Prefix+"/outbox", c.authed(false, c.outboxList))
	pages.Handle("GET "+Prefix+"/outbox/bulk", c.authed(true, c.outboxBulkConfirm))
	pages.Handle("POST "+Prefix+"/outbox/bulk", c.authed(true, c.outboxBulk))
	pages.Handle("GET "+Prefix+"/outbox/progress", c.authed(false, c.outboxProgress))
	pages.Handle("GET "+Prefix+"/outbox/{id}", c.authed(false, c.actionPage))
	pages.Handle("POST "+Prefix+"/outbox/{id}/retry", c.authed(true, c.actionRetry))
	pages.Handle("POST "+Prefix+"/outbox/{id}/cancel", c.authed(true, c.actionCancel))

	pages.Handle("GET "+Prefix+"/dlq", c.authed(false, c.dlqList))
	pages.Handle("GET "+Prefix+"/dlq/bulk", c.authed(true, c.dlqBulkConfirm))
	pages.Handle("POST "+Prefix+"/dlq/bulk", c.authed(true, c.dlqBulk))
	pages.Handle("GET "+Prefix+"/dlq/{id}", c.authed(false, c.dlqEntry))
	pages.Handle("POST "+Prefix+"/dlq/{id}/redrive", c.authed(true, c.dlqRedrive))
	pages.Handle("POST "+Prefix+"/dlq/{id}/discard", c.authed(true, c.dlqDiscard))

	pages.Handle("GET "+Prefix+"/conversations", c.authed(false, c.conversations))
	pages.Handle("GET "+Prefix+"/conversations/{id}", c.authed(false, c.conversation))
	pages.Handle("GET "+Prefix+"/audit", c.authed(false, c.audit))

	pages.Handle("GET "+Prefix+"/inbox", c.authed(false, c.inbox))
	pages.Handle("GET "+Prefix+"/inbox/live", c.authed(false, c.inboxLive))
	pages.Handle("GET "+Prefix+"/inbox/{id}", c.authed(false, c.inboxConversation))
	pages.Handle("GET "+Prefix+"/inbox/{id}/live", c.authed(false, c.inboxConversationLive))
	pages.Handle("POST "+Prefix+"/inbox/{id}/claim", c.authed(false, answering(c.inboxClaim)))
	pages.Handle("POST "+Prefix+"/inbox/{id}/reply", c.authed(false, answering(c.inboxReply)))
	pages.Handle("POST "+Prefix+"/inbox/{id}/resolve", c.authed(false, answering(c.inboxResolve)))
	pages.Handle("POST "+Prefix+"/inbox/{id}/handback", c.authed(false, answering(c.inboxHandBack)))
	c.shopRoutes(pages)
	pages.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, &request{lang: pickLang(r)}, peakdesk.Errorf(peakdesk.ENotFound, "not found"))
	})

	csrf := http.NewCrossOriginProtection()
	if c.cfg.Origin != "" {
		if err := csrf.AddTrustedOrigin(strings.TrimSuffix(c.cfg.Origin, "/")); err != nil {
			return nil, fmt.Errorf("dashboard: origin: %w", err)
		}
	}
	csrf.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.log.WarnContext(r.Context(), "cross-origin request refused", "method", r.Method, "path", r.URL.Path,
			"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
		rq := &request{lang: pickLang(r)}
		c.renderStatus(w, r, rq, http.StatusForbidden, translate(rq.lang, "error.csrf"))
	}))

	root := http.NewServeMux()
	root.Handle("GET "+Prefix+"/static/", http.StripPrefix(Prefix+"/static/", cacheStatic(http.FileServerFS(static))))
	root.Handle(Prefix+"/", securityHeaders(csrf.Handler(c.sessions.LoadAndSave(pages))))
	return root, nil
}

// securityHeaders keeps the console out of frames and its scripts to its
// own files.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "+
			"img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func cacheStatic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// --- rendering ----------------------------------------------------------------

func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("base").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard: templates: %w", err)
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("dashboard: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// request is what a page knows about who asks.
type request struct {
	lang string
	op   *storage.ConsoleOperator
}

// who is the operator as the operations layer knows it.
func (rq *request) who() outbox.Operator {
	return outbox.Operator{ID: rq.op.Email, Shop: rq.op.Scope()}
}

func (rq *request) t(key string, args ...any) string { return translate(rq.lang, key, args...) }

// view is what every template gets.
type view struct {
	Lang, HTMLLang string
	Title, Nav     string
	Op             *storage.ConsoleOperator
	CanAct         bool
	Flash          string
	FlashError     bool
	Path           string
	Data           any
}

// T translates key into the page's language.
func (v *view) T(key string, args ...any) string { return translate(v.Lang, key, args...) }

func (c *Console) view(r *http.Request, rq *request, title, nav string, data any) *view {
	v := &view{Lang: rq.lang, HTMLLang: map[string]string{langEN: "en", langZH: "zh-CN"}[rq.lang],
		Title: title, Nav: nav, Op: rq.op, Data: data, Path: r.URL.RequestURI()}
	if rq.op != nil {
		v.CanAct = canAct(rq.op)
		if f := c.sessions.PopString(r.Context(), "flash"); f != "" {
			v.Flash, v.FlashError = f, c.sessions.PopBool(r.Context(), "flash_error")
		}
	}
	return v
}

// render writes page (a template name) with data, inside the layout or,
// for a fragment, alone.
func (c *Console) render(w http.ResponseWriter, r *http.Request, rq *request, status int, page, fragment, title, nav string, data any) {
	t, ok := c.pages[page]
	if !ok {
		c.log.ErrorContext(r.Context(), "no such template", "page", page)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	v := c.view(r, rq, title, nav, data)
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, cmp.Or(fragment, "layout"), v); err != nil {
		c.log.ErrorContext(r.Context(), "render", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

func (c *Console) renderStatus(w http.ResponseWriter, r *http.Request, rq *request, status int, msg string) {
	c.render(w, r, rq, status, "error", "", "error.title", "", map[string]any{
		"Status": fmt.Sprintf("%d %s", status, http.StatusText(status)), "Message": msg})
}

// fail shows err as an error page with its status.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, rq *request, err error) {
	status, msg := http.StatusInternalServerError, rq.t("error.internal")
	switch peakdesk.ErrorCode(err) {
	case peakdesk.EInvalid:
		status, msg = http.StatusBadRequest, peakdesk.ErrorMessage(err)
	case peakdesk.EPermissionDenied:
		status, msg = http.StatusForbidden, rq.t("error.forbidden")
	case peakdesk.ENotFound:
		status, msg = http.StatusNotFound, rq.t("error.notfound")
	case peakdesk.EConflict:
		status, msg = http.StatusConflict, peakdesk.ErrorMessage(err)
	case peakdesk.ERateLimited:
		status, msg = http.StatusTooManyRequests, peakdesk.ErrorMessage(err)
	case peakdesk.EOverloaded:
		status, msg = http.StatusServiceUnavailable, peakdesk.ErrorMessage(err)
	default:
		c.log.ErrorContext(r.Context(), "console page failed", "path", r.URL.Path, "err", err)
	}
	c.renderStatus(w, r, rq, status, msg)
}

// flash leaves a message for the next page of this session.
func (c *Console) flash(r *http.Request, msg string, isError bool) {
	c.sessions.Put(r.Context(), "flash", msg)
	c.sessions.Put(r.Context(), "flash_error", isError)
}

func itoa(n int) string { return fmt.Sprint(n) }
