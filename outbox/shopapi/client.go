// Package shopapi is the HTTP client of a shop's own systems
// (openapi.yaml, docs/integration.md): orders and logistics lookups, coupons and refunds, reply webhooks
// signed with the shop's secret. Every call goes through the egress guard
// (https, public addresses, no redirects), carries the action's
// Idempotency-Key and a W3C traceparent, and reads at most 64 KiB of the
// answer. Per-shop base URLs
// and secrets come from Postgres, cached.
package shopapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox/egress"
	"github.com/peakdesk/peakdesk/storage"
)

// Headers of calls to a shop's systems (and SignatureHeader).
const (
	// ShopHeader names the shop a call acts for.
	ShopHeader = "X-Peakdesk-Shop"
	// EventIDHeader carries a webhook delivery's event id, the same on
	// every retry.
	EventIDHeader = "X-Peakdesk-Event-Id"
	// ReplayedHeader marks a response the shop replayed for a repeated
	// idempotency key.
	ReplayedHeader = "Idempotent-Replayed"
)

// maxShopBody bounds what is read of a shop's answer: orders, coupons and
// error bodies are small, and a shop must not be able to make a relay hold
// megabytes per call.
const maxShopBody = 64 << 10

// ErrUnavailable wraps failures to get an answer from a shop at all: network
// errors, timeouts, an answer that is not what the API promises, no URL to
// call, or a call egress refused (then an *egress.RefusedError is in the
// chain too, and trying again cannot help). Non-2xx answers other than
// redirects are *Error instead.
var ErrUnavailable = errors.New("shop API unavailable")

// Config configures a Client. DB is required.
type Config struct {
	// DB holds the per-shop settings (base URL, secret, webhook).
	DB *storage.DB
	// DefaultBaseURL is the shop API of shops without one of their own
	// (PEAKDESK_SHOP_API_URL; the simulated shop in dev).
	DefaultBaseURL string
	// AllowPrivate lets calls use plain http and reach loopback, private
	// and link-local addresses (PEAKDESK_ALLOW_PRIVATE_SHOP_URLS): for dev
	// mode and tests, whose shops run on this machine. Never in production:
	// a shop's settings could then reach peakdesk's own network.
	AllowPrivate bool
	// Timeout bounds one call. Default 10 s.
	Timeout time.Duration
	// SettingsTTL is how long a shop's settings are cached. Default 10 s.
	SettingsTTL time.Duration
	// Now is the clock webhook signatures are dated by. Default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	c.Timeout = cmp.Or(c.Timeout, 10*time.Second)
	c.SettingsTTL = cmp.Or(c.SettingsTTL, 10*time.Second)
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	if c.DB == nil {
		return errors.New("shopapi: shop client config: DB is required")
	}
	if c.DefaultBaseURL != "" {
		if err := egress.CheckURL(c.DefaultBaseURL, c.AllowPrivate); err != nil {
			return fmt.Errorf("shopapi: shop client config: DefaultBaseURL: %w", err)
		}
	}
	return nil
}

// Client calls shops' own systems over HTTP JSON: orders, logistics,
// coupons, refunds, and reply webhooks. Every call names the shop in
// X-Peakdesk-Shop, carries the shop's secret as a bearer token, the trace of
// ctx as traceparent (peakdesk.TraceFrom; a new trace when ctx has none)
// and, when given, an Idempotency-Key. Every call passes egress's checks (https, public
// addresses only, no redirects). It is safe for concurrent use.
type Client struct {
	cfg  Config
	http *http.Client

	mu       sync.Mutex
	settings map[string]cachedSettings
	forgets  uint64 // calls of ForgetShop: a read begun before one is not cached
}

type cachedSettings struct {
	s     storage.ShopAPISettings
	until time.Time
}

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, http: egress.NewClient(cfg.AllowPrivate), settings: make(map[string]cachedSettings)}, nil
}

// PutSettings checks s's URLs as calls will (https unless AllowPrivate; no
// address that is not public) and stores s (storage.PutShopAPISettings: a
// shop without a webhook secret gets one generated). Shop administration
// writes settings through here, so a URL that could never be called is an
// invalid_argument now rather than a dead action later.
func (c *Client) PutSettings(ctx context.Context, s storage.ShopAPISettings) error {
	for _, u := range []struct{ field, url string }{{"base_url", s.BaseURL}, {"webhook_url", s.WebhookURL}} {
		if u.url == "" {
			continue
		}
		if err := egress.CheckURL(u.url, c.cfg.AllowPrivate); err != nil {
			return peakdesk.FieldError(u.field, "%s: %v", u.field, err)
		}
	}
	if err := c.cfg.DB.PutShopAPISettings(ctx, s); err != nil {
		return err
	}
	c.ForgetShop(s.ShopID)
	return nil
}

// Settings returns shop's settings, cached for SettingsTTL.
func (c *Client) Settings(ctx context.Context, shop string) (storage.ShopAPISettings, error) {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.settings[shop]
	forgets := c.forgets
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.s, nil
	}
	s, err := c.cfg.DB.ShopAPISettings(ctx, shop)
	if err != nil {
		return s, err
	}
	c.mu.Lock()
	if c.forgets == forgets {
		c.settings[shop] = cachedSettings{s: s, until: now.Add(c.cfg.SettingsTTL)}
	}
	c.mu.Unlock()
	return s, nil
}

// ForgetShop drops the cached settings of shop (of every shop for ""):
// they changed. Subscribe it to the settings notifications
// (storage/shopwatch).
func (c *Client) ForgetShop(shop string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	if shop == "" {
		clear(c.settings)
		return
	}
	delete(c.settings, shop)
}

// Error is a non-2xx answer from a shop.
type Error struct {
	Status int
	// Code and Message come from the shop's {"error":{"code","message"}}
	// body when it has one.
	Code    string
	Message string
	// RetryAfter is the shop's Retry-After, if any.
	RetryAfter time.Duration
	// Body is the start of the answer, for the attempt record.
	Body []byte
}

// Error implements error.
func (e *Error) Error() string {
	msg := fmt.Sprintf("shop answered %d", e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Transient reports whether the same request may succeed later: timeouts,
// conflicts with a request in flight, rate limits and server errors.
// Every other 4xx is the shop's final refusal.
func (e *Error) Transient() bool {
	switch e.Status {
	case http.StatusRequestTimeout, http.StatusConflict, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return e.Status >= 500
}

// KeyReuse reports whether the shop refused because the idempotency key was
// used before with other parameters: something may have been applied under
// the key, so a new key would not be safe.
func (e *Error) KeyReuse() bool { return e.Code == "idempotency_key_reuse" }

// Response is a 2xx answer.
type Response struct {
	Status int
	Body   []byte
	// Replayed is true when the shop answered a repeated idempotency key
	// with its stored first answer.
	Replayed bool
	// Truncated is true when the answer was longer than the 64 KiB read
	// of it; Body is its start.
	Truncated bool
}

// decode unmarshals the answer into v.
func (r *Response) decode(what string, v any) error {
	if r.Truncated {
		return fmt.Errorf("%w: %s answer is larger than %d KiB", ErrUnavailable, what, maxShopBody>>10)
	}
	if err := json.Unmarshal(r.Body, v); err != nil {
		return fmt.Errorf("%w: %s answer: %w", ErrUnavailable, what, err)
	}
	return nil
}

// call is one request to a shop.
type call struct {
	shop, method, url, key string
	body                   []byte
	header                 map[string]string
	// sign, when set, is the webhook secret the body is signed with.
	sign []byte
}

func (c *Client) baseURL(s storage.ShopAPISettings) (string, error) {
	base := cmp.Or(s.BaseURL, c.cfg.DefaultBaseURL)
	if base == "" {
		return "", fmt.Errorf("%w: shop %s has no shop API URL and there is no default", ErrUnavailable, s.ShopID)
	}
	return strings.TrimRight(base, "/"), nil
}

// api calls path of shop's API with the shop's secret.
func (c *Client) api(ctx context.Context, shop, method, path, key string, body []byte) (*Response, error) {
	s, err := c.Settings(ctx, shop)
	if err != nil {
		return nil, err
	}
	base, err := c.baseURL(s)
	if err != nil {
		return nil, err
	}
	h := map[string]string{}
	if s.Secret != "" {
		h["Authorization"] = "Bearer " + s.Secret
	}
	return c.do(ctx, call{shop: shop, method: method, url: base + path, key: key, body: body, header: h})
}

func (c *Client) do(ctx context.Context, cl call) (*Response, error) {
	if err := egress.CheckURL(cl.url, c.cfg.AllowPrivate); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, cl.url, body)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	req.Header.Set("Accept", "application/json")
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(ShopHeader, cl.shop)
	trace := peakdesk.TraceFrom(ctx)
	if trace.Parent == "" {
		trace = peakdesk.ContinueTrace("")
	}
	req.Header.Set(peakdesk.TraceHeader, trace.Parent)
	if cl.key != "" {
		req.Header.Set("Idempotency-Key", cl.key)
	}
	for k, v := range cl.header {
		req.Header.Set(k, v)
	}
	if cl.sign != nil {
		// Signed last, when sent: a retry is a new signature.
		req.Header.Set(SignatureHeader, SignWebhook(cl.sign, cl.body, c.cfg.Now()))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, egress.Redirect(resp.StatusCode, resp.Header.Get("Location")))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxShopBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read answer: %w", ErrUnavailable, err)
	}
	truncated := len(data) > maxShopBody
	if truncated {
		data = data[:maxShopBody]
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		se := &Error{Status: resp.StatusCode, Body: data, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &eb) == nil {
			se.Code, se.Message = eb.Error.Code, eb.Error.Message
		}
		return nil, se
	}
	return &Response{Status: resp.StatusCode, Body: data, Truncated: truncated,
		Replayed: resp.Header.Get(ReplayedHeader) == "true"}, nil
}

func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// Order is an order as the shop API describes it.
type Order struct {
	ID          string      `json:"id"`
	UserID      string      `json:"user_id"`
	Status      string      `json:"status"`
	AmountCents int64       `json:"amount_cents"`
	Currency    string      `json:"currency"`
	Items       []OrderItem `json:"items"`
	CreatedAt   time.Time   `json:"created_at"`
}

// OrderItem is one line of an Order.
type OrderItem struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	Quantity   int    `json:"quantity"`
	PriceCents int64  `json:"price_cents"`
}

// Logistics is where an order's parcel is.
type Logistics struct {
	OrderID    string `json:"order_id"`
	Carrier    string `json:"carrier"`
	TrackingNo string `json:"tracking_no"`
	Status     string `json:"status"`
	// ETA is when the carrier expects to deliver, if it says.
	ETA    *time.Time       `json:"eta,omitempty"`
	Events []LogisticsEvent `json:"events"`
}

// LogisticsEvent is one scan of a parcel.
type LogisticsEvent struct {
	At          time.Time `json:"at"`
	Status      string    `json:"status"`
	Location    string    `json:"location"`
	Description string    `json:"description"`
}

// Order returns order id of shop (GET /orders/{id}). key may be empty.
func (c *Client) Order(ctx context.Context, shop, id, key string) (*Order, error) {
	resp, err := c.api(ctx, shop, http.MethodGet, "/orders/"+url.PathEscape(id), key, nil)
	if err != nil {
		return nil, err
	}
	var o Order
	if err := resp.decode("order", &o); err != nil {
		return nil, err
	}
	return &o, nil
}

// Logistics returns the logistics of order id of shop
// (GET /orders/{id}/logistics). key may be empty.
func (c *Client) Logistics(ctx context.Context, shop, id, key string) (*Logistics, error) {
	resp, err := c.api(ctx, shop, http.MethodGet, "/orders/"+url.PathEscape(id)+"/logistics", key, nil)
	if err != nil {
		return nil, err
	}
	var l Logistics
	if err := resp.decode("logistics", &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// CouponRequest is the body of POST /coupons.
type CouponRequest struct {
	OrderID     string `json:"order_id,omitempty"`
	UserID      string `json:"user_id"`
	AmountCents int64  `json:"amount_cents"`
	Reason      string `json:"reason"`
}

// RefundRequest is the body of POST /refunds.
type RefundRequest struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Reason      string `json:"reason"`
}

// CreateCoupon issues a coupon at shop under idempotency key key.
func (c *Client) CreateCoupon(ctx context.Context, shop, key string, req CouponRequest) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("shop coupon: %w", err)
	}
	return c.api(ctx, shop, http.MethodPost, "/coupons", key, body)
}

// CreateRefund requests a refund at shop under idempotency key key.
func (c *Client) CreateRefund(ctx context.Context, shop, key string, req RefundRequest) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("shop refund: %w", err)
	}
	return c.api(ctx, shop, http.MethodPost, "/refunds", key, body)
}

// errNoWebhook is returned when a shop has no webhook URL (any longer).
var errNoWebhook = fmt.Errorf("%w: the shop has no webhook URL configured", ErrUnavailable)

// DeliverWebhook posts body to shop's webhook URL with the event id and
// idempotency key in headers, signed with the shop's webhook secret and the
// time of sending (SignatureHeader). A shop without a secret gets nothing:
// an unsigned webhook would teach receivers to accept forgeries.
func (c *Client) DeliverWebhook(ctx context.Context, shop, eventID, key string, body []byte) (*Response, error) {
	s, err := c.Settings(ctx, shop)
	if err != nil {
		return nil, err
	}
	if s.WebhookURL == "" {
		return nil, errNoWebhook
	}
	if s.WebhookSecret == "" {
		return nil, fmt.Errorf("%w: the shop has no webhook secret to sign with", ErrUnavailable)
	}
	return c.do(ctx, call{shop: shop, method: http.MethodPost, url: s.WebhookURL, key: key, body: body,
		header: map[string]string{EventIDHeader: eventID}, sign: []byte(s.WebhookSecret)})
}
