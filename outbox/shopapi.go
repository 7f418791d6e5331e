package outbox

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/peakdesk/peakdesk/storage"
)

// Headers of calls to a shop's systems.
const (
	// ShopHeader names the shop a call acts for.
	ShopHeader = "X-Peakdesk-Shop"
	// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the raw body>"
	// on reply webhooks.
	SignatureHeader = "X-Peakdesk-Signature"
	// EventIDHeader carries a webhook delivery's event id, the same on
	// every retry.
	EventIDHeader = "X-Peakdesk-Event-Id"
	// ReplayedHeader marks a response the shop replayed for a repeated
	// idempotency key.
	ReplayedHeader = "Idempotent-Replayed"
)

// maxShopBody bounds what is read of a shop's answer.
const maxShopBody = 1 << 20

// ErrUnavailable wraps failures to get an answer from a shop at all: network
// errors, timeouts, an answer that is not what the API promises, or no URL
// to call. Non-2xx answers are *ShopError instead.
var ErrUnavailable = errors.New("shop API unavailable")

// ShopClientConfig configures a ShopClient. DB is required.
type ShopClientConfig struct {
	// DB holds the per-shop settings (base URL, secret, webhook).
	DB *storage.DB
	// DefaultBaseURL is the shop API of shops without one of their own
	// (PEAKDESK_SHOP_API_URL; the simulated shop in dev).
	DefaultBaseURL string
	// HTTPClient defaults to a client with a connection pool sized for a
	// relay; its Timeout should be unset (Timeout below applies per call).
	HTTPClient *http.Client
	// Timeout bounds one call. Default 10 s.
	Timeout time.Duration
	// SettingsTTL is how long a shop's settings are cached. Default 10 s.
	SettingsTTL time.Duration
}

func (c *ShopClientConfig) setDefaults() {
	if c.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 128
		c.HTTPClient = &http.Client{Transport: t}
	}
	c.Timeout = cmp.Or(c.Timeout, 10*time.Second)
	c.SettingsTTL = cmp.Or(c.SettingsTTL, 10*time.Second)
}

func (c *ShopClientConfig) validate() error {
	if c.DB == nil {
		return errors.New("outbox: shop client config: DB is required")
	}
	if c.DefaultBaseURL != "" {
		if u, err := url.Parse(c.DefaultBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("outbox: shop client config: DefaultBaseURL must be an http(s) URL")
		}
	}
	return nil
}

// ShopClient calls shops' own systems over HTTP JSON: orders, logistics,
// coupons, refunds, and reply webhooks. Every call names the shop in
// X-Peakdesk-Shop, carries the shop's secret as a bearer token and, when
// given, an Idempotency-Key. It is safe for concurrent use.
type ShopClient struct {
	cfg ShopClientConfig

	mu       sync.Mutex
	settings map[string]cachedSettings
}

type cachedSettings struct {
	s     storage.ShopAPISettings
	until time.Time
}

// NewShopClient returns a ShopClient for cfg.
func NewShopClient(cfg ShopClientConfig) (*ShopClient, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &ShopClient{cfg: cfg, settings: make(map[string]cachedSettings)}, nil
}

// Settings returns shop's settings, cached for SettingsTTL.
func (c *ShopClient) Settings(ctx context.Context, shop string) (storage.ShopAPISettings, error) {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.settings[shop]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.s, nil
	}
	s, err := c.cfg.DB.ShopAPISettings(ctx, shop)
	if err != nil {
		return s, err
	}
	c.mu.Lock()
	c.settings[shop] = cachedSettings{s: s, until: now.Add(c.cfg.SettingsTTL)}
	c.mu.Unlock()
	return s, nil
}

// ShopError is a non-2xx answer from a shop.
type ShopError struct {
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
func (e *ShopError) Error() string {
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
func (e *ShopError) Transient() bool {
	switch e.Status {
	case http.StatusRequestTimeout, http.StatusConflict, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return e.Status >= 500
}

// KeyReuse reports whether the shop refused because the idempotency key was
// used before with other parameters: something may have been applied under
// the key, so a new key would not be safe.
func (e *ShopError) KeyReuse() bool { return e.Code == "idempotency_key_reuse" }

// ShopResponse is a 2xx answer.
type ShopResponse struct {
	Status int
	Body   []byte
	// Replayed is true when the shop answered a repeated idempotency key
	// with its stored first answer.
	Replayed bool
}

// call is one request to a shop.
type call struct {
	shop, method, url, key string
	body                   []byte
	header                 map[string]string
}

func (c *ShopClient) baseURL(s storage.ShopAPISettings) (string, error) {
	base := cmp.Or(s.BaseURL, c.cfg.DefaultBaseURL)
	if base == "" {
		return "", fmt.Errorf("%w: shop %s has no shop API URL and there is no default", ErrUnavailable, s.ShopID)
	}
	return strings.TrimRight(base, "/"), nil
}

// api calls path of shop's API with the shop's secret.
func (c *ShopClient) api(ctx context.Context, shop, method, path, key string, body []byte) (*ShopResponse, error) {
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

func (c *ShopClient) do(ctx context.Context, cl call) (*ShopResponse, error) {
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
	if cl.key != "" {
		req.Header.Set("Idempotency-Key", cl.key)
	}
	for k, v := range cl.header {
		req.Header.Set(k, v)
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxShopBody))
	if err != nil {
		return nil, fmt.Errorf("%w: read answer: %w", ErrUnavailable, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		se := &ShopError{Status: resp.StatusCode, Body: data, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
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
	return &ShopResponse{Status: resp.StatusCode, Body: data, Replayed: resp.Header.Get(ReplayedHeader) == "true"}, nil
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
	OrderID    string           `json:"order_id"`
	Carrier    string           `json:"carrier"`
	TrackingNo string           `json:"tracking_no"`
	Status     string           `json:"status"`
	Events     []LogisticsEvent `json:"events"`
}

// LogisticsEvent is one scan of a parcel.
type LogisticsEvent struct {
	At          time.Time `json:"at"`
	Status      string    `json:"status"`
	Location    string    `json:"location"`
	Description string    `json:"description"`
}

// Order returns order id of shop (GET /orders/{id}). key may be empty.
func (c *ShopClient) Order(ctx context.Context, shop, id, key string) (*Order, error) {
	resp, err := c.api(ctx, shop, http.MethodGet, "/orders/"+url.PathEscape(id), key, nil)
	if err != nil {
		return nil, err
	}
	var o Order
	if err := json.Unmarshal(resp.Body, &o); err != nil {
		return nil, fmt.Errorf("%w: order answer: %w", ErrUnavailable, err)
	}
	return &o, nil
}

// Logistics returns the logistics of order id of shop
// (GET /orders/{id}/logistics). key may be empty.
func (c *ShopClient) Logistics(ctx context.Context, shop, id, key string) (*Logistics, error) {
	resp, err := c.api(ctx, shop, http.MethodGet, "/orders/"+url.PathEscape(id)+"/logistics", key, nil)
	if err != nil {
		return nil, err
	}
	var l Logistics
	if err := json.Unmarshal(resp.Body, &l); err != nil {
		return nil, fmt.Errorf("%w: logistics answer: %w", ErrUnavailable, err)
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
func (c *ShopClient) CreateCoupon(ctx context.Context, shop, key string, req CouponRequest) (*ShopResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("shop coupon: %w", err)
	}
	return c.api(ctx, shop, http.MethodPost, "/coupons", key, body)
}

// CreateRefund requests a refund at shop under idempotency key key.
func (c *ShopClient) CreateRefund(ctx context.Context, shop, key string, req RefundRequest) (*ShopResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("shop refund: %w", err)
	}
	return c.api(ctx, shop, http.MethodPost, "/refunds", key, body)
}

// errNoWebhook is returned when a shop has no webhook URL (any longer).
var errNoWebhook = fmt.Errorf("%w: the shop has no webhook URL configured", ErrUnavailable)

// DeliverWebhook posts body to shop's webhook URL, signed with the shop's
// webhook secret (no signature header when it has none), with the event id
// and idempotency key in headers.
func (c *ShopClient) DeliverWebhook(ctx context.Context, shop, eventID, key string, body []byte) (*ShopResponse, error) {
	s, err := c.Settings(ctx, shop)
	if err != nil {
		return nil, err
	}
	if s.WebhookURL == "" {
		return nil, errNoWebhook
	}
	h := map[string]string{EventIDHeader: eventID}
	if s.WebhookSecret != "" {
		h[SignatureHeader] = Sign([]byte(s.WebhookSecret), body)
	}
	return c.do(ctx, call{shop: shop, method: http.MethodPost, url: s.WebhookURL, key: key, body: body, header: h})
}

// Sign returns the X-Peakdesk-Signature value of body under secret:
// "sha256=" and the hex HMAC-SHA256 of the raw body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}
