package dashboard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// Session keys.
const (
	sessOperator = "op"
	sessAuthAt   = "auth_at"
	sessSeenAt   = "seen_at"
)

// canAct reports whether op may change things (retry, cancel, re-drive,
// discard): operators and admins; viewers and agents only look.
func canAct(op *storage.ConsoleOperator) bool {
	return op.Role == storage.RoleOperator || op.Role == storage.RoleAdmin
}

type pageFunc func(w http.ResponseWriter, r *http.Request, rq *request) error

// authed wraps a page that needs a logged-in operator, and one who may act
// when act is set (a viewer's POST is refused even without a button).
func (c *Console) authed(act bool, fn pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rq := &request{lang: pickLang(r)}
		op, expired, err := c.currentOperator(r)
		if err != nil {
			c.fail(w, r, rq, err)
			return
		}
		if op == nil {
			c.toLogin(w, r, expired)
			return
		}
		rq.op = op
		if act && !canAct(op) {
			c.fail(w, r, rq, peakdesk.Errorf(peakdesk.EPermissionDenied, "viewers cannot act"))
			return
		}
		if err := fn(w, r, rq); err != nil {
			c.fail(w, r, rq, err)
		}
	})
}

// isPoll tells the console's own refreshes (htmx polling, chart data) from
// an operator's clicks: only clicks keep a session from going idle.
func isPoll(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.Header.Get("HX-Request") == "true" || r.Header.Get("X-Console-Poll") == "1")
}

// currentOperator returns the session's operator, or nil (expired tells
// whether a session ran out rather than never existed).
func (c *Console) currentOperator(r *http.Request) (op *storage.ConsoleOperator, expired bool, err error) {
	ctx := r.Context()
	id := c.sessions.GetInt64(ctx, sessOperator)
	if id == 0 {
		return nil, false, nil
	}
	now := c.cfg.Now()
	// Times are kept as Unix nanoseconds: the session codec (gob) needs no
	// registered types for them.
	authAt := time.Unix(0, c.sessions.GetInt64(ctx, sessAuthAt))
	seenAt := time.Unix(0, c.sessions.GetInt64(ctx, sessSeenAt))
	if now.Sub(authAt) >= c.cfg.Lifetime || now.Sub(seenAt) >= c.cfg.IdleTimeout {
		return nil, true, c.sessions.Destroy(ctx)
	}
	op, err = c.cfg.DB.OperatorByID(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound) || (err == nil && op.Disabled):
		return nil, true, c.sessions.Destroy(ctx)
	case err != nil:
		return nil, false, err
	}
	if !isPoll(r) {
		c.sessions.Put(ctx, sessSeenAt, now.UnixNano())
	}
	return op, false, nil
}

// toLogin sends a visitor without a session to the login page; an htmx
// request gets told to load it as a whole page.
func (c *Console) toLogin(w http.ResponseWriter, r *http.Request, expired bool) {
	q := url.Values{}
	if r.Method == http.MethodGet && !isPoll(r) {
		q.Set("next", r.URL.RequestURI())
	}
	if expired {
		q.Set("expired", "1")
	}
	target := Prefix + "/login"
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	if r.Header.Get("HX-Request") == "true" {
		w.Header().Set("HX-Redirect", target)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}

type loginData struct {
	Email, Error string
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	rq := &request{lang: pickLang(r)}
	if op, _, err := c.currentOperator(r); err == nil && op != nil {
		http.Redirect(w, r, nextPage(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	var d loginData
	switch {
	case r.URL.Query().Get("expired") != "":
		d.Error = rq.t("login.expired")
	case r.URL.Query().Get("out") != "":
		d.Error = rq.t("login.out")
	}
	c.render(w, r, rq, http.StatusOK, "login", "", "login.title", "", d)
}

// nextPage keeps a post-login redirect inside the console.
func nextPage(next string) string {
	if strings.HasPrefix(next, Prefix+"/") && !strings.HasPrefix(next, "//") && !strings.Contains(next, `\`) &&
		!strings.HasPrefix(next, Prefix+"/login") {
		return next
	}
	return Prefix + "/"
}

// login checks the login rate limits (per e-mail and per client IP, Redis
// GCRA), then the password, and starts a fresh session.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rq := &request{lang: pickLang(r)}
	email := strings.ToLower(strings.TrimSpace(r.PostFormValue("email")))
	password := r.PostFormValue("password")
	d := loginData{Email: email}
	if wait := c.loginAllowed(ctx, email, clientIP(r)); wait > 0 {
		secs := int(wait/time.Second) + 1
		d.Error = rq.t("login.limited", secs)
		w.Header().Set("Retry-After", itoa(secs))
		c.render(w, r, rq, http.StatusTooManyRequests, "login", "", "login.title", "", d)
		return
	}
	op, err := c.cfg.DB.OperatorByEmail(ctx, email)
	hash := c.dummyHash
	switch {
	case err == nil:
		hash = op.PasswordHash
	case !errors.Is(err, storage.ErrNotFound):
		c.fail(w, r, rq, err)
		return
	}
	ok, verr := VerifyPassword(hash, password)
	if err != nil || verr != nil || !ok || op.Disabled {
		c.log.InfoContext(ctx, "console login refused", "ip", clientIP(r))
		d.Error = rq.t("login.bad")
		c.render(w, r, rq, http.StatusUnauthorized, "login", "", "login.title", "", d)
		return
	}
	// A new token at login: a session id planted before login is worthless.
	if err := c.sessions.RenewToken(ctx); err != nil {
		c.fail(w, r, rq, err)
		return
	}
	now := c.cfg.Now()
	c.sessions.Put(ctx, sessOperator, op.ID)
	c.sessions.Put(ctx, sessAuthAt, now.UnixNano())
	c.sessions.Put(ctx, sessSeenAt, now.UnixNano())
	if err := c.cfg.DB.RecordLogin(ctx, op.ID, &storage.AuditEntry{Actor: op.Email, Scope: op.Scope(),
		Shop: op.ShopID, Action: "console.login", Target: "operator:" + itoa(int(op.ID))}); err != nil {
		c.fail(w, r, rq, err)
		return
	}
	c.log.InfoContext(ctx, "console login", "operator", op.Email, "role", op.Role, "scope", op.Scope())
	http.Redirect(w, r, nextPage(r.URL.Query().Get("next")), http.StatusSeeOther)
}

// loginAllowed counts a login attempt against both limits and returns how
// long to wait when one is used up. While Redis is unreachable logins are
// not limited (argon2id still makes guessing slow), and the log says so.
func (c *Console) loginAllowed(ctx context.Context, email, ip string) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var wait time.Duration
	for _, lim := range []struct {
		key  string
		rate int
	}{{c.cfg.LoginKeyPrefix + "email:" + digest(email), c.cfg.LoginPerEmail},
		{c.cfg.LoginKeyPrefix + "ip:" + digest(ip), c.cfg.LoginPerIP}} {
		res, err := c.limiter.Allow(ctx, lim.key, redis_rate.PerMinute(lim.rate))
		if err != nil {
			c.log.WarnContext(ctx, "login rate limit unavailable; allowing", "err", err)
			return 0
		}
		if res.Allowed == 0 {
			wait = max(wait, res.RetryAfter)
		}
	}
	return wait
}

// digest keeps e-mail addresses and IPs out of Redis key names.
func digest(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:12])
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if op, _, err := c.currentOperator(r); err == nil && op != nil {
		_ = c.cfg.DB.Audit(ctx, &storage.AuditEntry{Actor: op.Email, Scope: op.Scope(), Shop: op.ShopID,
			Action: "console.logout", Target: "operator:" + itoa(int(op.ID))})
	}
	if err := c.sessions.Destroy(ctx); err != nil {
		c.fail(w, r, &request{lang: pickLang(r)}, err)
		return
	}
	http.Redirect(w, r, Prefix+"/login?out=1", http.StatusSeeOther)
}

// switchLang remembers the chosen language in a cookie and goes back.
func (c *Console) switchLang(w http.ResponseWriter, r *http.Request) {
	to := r.URL.Query().Get("to")
	if texts[to] == nil {
		to = langEN
	}
	http.SetCookie(w, &http.Cookie{Name: langCookie, Value: to, Path: Prefix, MaxAge: 365 * 24 * 3600,
		HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: c.sessions.Cookie.Secure})
	back := r.URL.Query().Get("back")
	if strings.HasPrefix(back, Prefix+"/login") {
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, nextPage(back), http.StatusSeeOther)
}
