package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/dashboard"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage/secrets"
)

const apiSecret = "admin-api-test-secret-0123456789abcdef"

// lockedBuffer collects log lines from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// adminAPI serves the admin API of a console whose every log line, at
// debug level, goes to logs; secrets are sealed under a test master key.
func adminAPI(t *testing.T) (*testBundle, string, *lockedBuffer) {
	t.Helper()
	b := setup(t, bundleOptions{})
	box, err := secrets.New(bytes.Repeat([]byte{5}, secrets.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	b.db.UseSecrets(box)
	logs := &lockedBuffer{}
	c, err := dashboard.New(dashboard.Config{DB: b.db, Redis: b.rdb, JS: b.js,
		Logger:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		LoginKeyPrefix: b.prefix + "login2:", SnapshotPrefix: b.prefix + "snap2:"})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.RegisterAdminAPI(mux, token.NewAuthenticator([]byte(apiSecret)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return b, srv.URL, logs
}

func adminToken(t *testing.T, shop string, scopes ...string) string {
	t.Helper()
	tok, err := token.Sign([]byte(apiSecret), shop, "ops-bot", scopes, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type apiResult struct {
	status int
	body   string
}

func apiCall(t *testing.T, method, url, tok, contentType, body string) apiResult {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, body: string(data)}
}

// The admin API end to end: only admin tokens; a shop created with its
// limits, webhook, LLM chain and secrets; secrets sealed in Postgres,
// masked in every answer and absent from the logs; an FAQ uploaded and a
// question tried.
func TestAdminAPICreatesAShopAndNeverShowsItsSecrets(t *testing.T) {
	t.Parallel()
	b, base, logs := adminAPI(t)
	ctx := context.Background()
	root := adminToken(t, "*", token.ScopeAdmin)
	const (
		llmKey     = "sk-tea-provider-a-0123456789"
		apiKey     = "tea-shop-api-secret-abcdef"
		webhookKey = "whsec-tea-0123456789abcdef"
	)
	create := `{"id":"tea","name":"Tea House","language":"en",
		"limits":{"rate_per_second":30,"user_rate_per_minute":20},
		"admission":{"max_wait_p2":"15s"},
		"rules":{"p0":["refund","退款"]},
		"llm":{"chain":[{"model":"chat-a","base_url":"https://a.example/v1","api_key":"` + llmKey + `"},
			{"model":"chat-b","base_url":"https://b.example/v1"}],"temperature":0.2,"system_prompt":"Be kind."},
		"shop_api":{"base_url":"https://tea.example/api","secret":"` + apiKey + `"},
		"webhook":{"url":"https://tea.example/hooks","secret":"` + webhookKey + `"},
		"money":{"coupon_per_user_per_day":2,"coupon_max_cents":1000}}`

	// Who may call.
	for _, tc := range []struct {
		tok  string
		want int
	}{
		{"", http.StatusUnauthorized},
		{adminToken(t, "*", token.ScopeOps, token.ScopeOpsWrite), http.StatusForbidden},
		{adminToken(t, "demo", token.ScopeAdmin), http.StatusForbidden}, // a shop's admin creates no shop
	} {
		if r := apiCall(t, "POST", base+"/v1/admin/shops", tc.tok, "application/json", create); r.status != tc.want {
			t.Errorf("create with %q: %d %s, want %d", tc.tok, r.status, r.body, tc.want)
		}
	}

	r := apiCall(t, "POST", base+"/v1/admin/shops", root, "application/json", create)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created struct {
		Shop struct {
			Limits struct {
				RatePerSecond int `json:"rate_per_second"`
			} `json:"limits"`
			Webhook struct{ URL, Secret string } `json:"webhook"`
			LLM     struct {
				Chain []struct {
					Model  string `json:"model"`
					APIKey string `json:"api_key"`
				} `json:"chain"`
			} `json:"llm"`
		} `json:"shop"`
		WebhookSecret string `json:"webhook_secret"`
	}
	if err := json.Unmarshal([]byte(r.body), &created); err != nil {
		t.Fatal(err)
	}
	if created.Shop.Limits.RatePerSecond != 30 || created.Shop.Webhook.URL != "https://tea.example/hooks" ||
		created.Shop.Webhook.Secret != "••••cdef" || created.Shop.LLM.Chain[0].APIKey != "••••6789" ||
		created.WebhookSecret != "" {
		t.Fatalf("created %s", r.body)
	}
	if r := apiCall(t, "POST", base+"/v1/admin/shops", root, "application/json", create); r.status != http.StatusBadRequest {
		t.Errorf("second create: %d %s", r.status, r.body)
	}

	r = apiCall(t, "PATCH", base+"/v1/admin/shops/tea", root, "application/json",
		`{"limits":{"rate_per_second":45},"webhook":{"url":"https://tea.example/hooks/v2"}}`)
	if r.status != http.StatusOK || !strings.Contains(r.body, `"rate_per_second":45`) || !strings.Contains(r.body, "hooks/v2") {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	for _, bad := range []struct{ body, field string }{
		{`{"limits":{"rate_per_secnd":1}}`, ""},
		{`{"webhook":{"url":"https://169.254.169.254/"}}`, "webhook.url"},
		{`{"llm":{"chain":[{"model":"x","base_url":"http://10.1.2.3/v1"}]}}`, "llm.chain[0].base_url"},
	} {
		r := apiCall(t, "PATCH", base+"/v1/admin/shops/tea", root, "application/json", bad.body)
		if r.status != http.StatusBadRequest || (bad.field != "" && !strings.Contains(r.body, `"field":"`+bad.field)) {
			t.Errorf("patch %s: %d %s", bad.body, r.status, r.body)
		}
	}
	// A shop's admin sees and changes its own shop, not another's, and not its limits.
	teaAdmin := adminToken(t, "tea", token.ScopeAdmin)
	if r := apiCall(t, "GET", base+"/v1/admin/shops/demo", teaAdmin, "", ""); r.status != http.StatusNotFound {
		t.Errorf("another shop: %d", r.status)
	}
	if r := apiCall(t, "PATCH", base+"/v1/admin/shops/tea", teaAdmin, "application/json", `{"limits":{"rate_per_second":1000}}`); r.status != http.StatusForbidden {
		t.Errorf("own limits: %d %s", r.status, r.body)
	}
	got := apiCall(t, "GET", base+"/v1/admin/shops/tea", teaAdmin, "", "")
	if got.status != http.StatusOK {
		t.Fatalf("get: %d %s", got.status, got.body)
	}

	// FAQ: upload, list, try a question.
	csv := "question,answer\n双11满减怎么算？,每满300减50，可跨店累计。\nHow long does delivery take?,Orders ship within 48 hours.\n"
	if r := apiCall(t, "POST", base+"/v1/admin/shops/tea/faq", root, "text/csv", csv); r.status != http.StatusOK || !strings.Contains(r.body, `"inserted":2`) {
		t.Fatalf("faq import: %d %s", r.status, r.body)
	}
	r = apiCall(t, "POST", base+"/v1/admin/shops/tea/faq/test", root, "application/json", `{"question":"how long does the delivery take"}`)
	if r.status != http.StatusOK || !strings.Contains(r.body, `"answers_alone":true`) || !strings.Contains(r.body, "Orders ship") {
		t.Fatalf("faq test: %d %s", r.status, r.body)
	}
	list := apiCall(t, "GET", base+"/v1/admin/shops/tea/faq", root, "", "")
	var entries struct {
		Entries []struct{ ID int64 } `json:"entries"`
	}
	_ = json.Unmarshal([]byte(list.body), &entries)
	if len(entries.Entries) != 2 {
		t.Fatalf("faq list %s", list.body)
	}
	if r := apiCall(t, "DELETE", base+"/v1/admin/shops/tea/faq/"+strconv.FormatInt(entries.Entries[0].ID, 10), root, "", ""); r.status != http.StatusNoContent {
		t.Fatalf("faq delete: %d %s", r.status, r.body)
	}

	// Rotating the signing key shows its secret once.
	r = apiCall(t, "POST", base+"/v1/admin/shops/tea/rotate-key", root, "application/json", `{"overlap":"1h"}`)
	if r.status != http.StatusOK || !strings.Contains(r.body, `"kid"`) {
		t.Fatalf("rotate: %d %s", r.status, r.body)
	}

	// At rest: sealed.
	var stored string
	if err := b.conn.QueryRow(ctx, `SELECT concat_ws(' ', a.secret, a.webhook_secret, (SELECT string_agg(api_key, ' ') FROM shop_llm_models WHERE shop_id = 'tea'))
		FROM shop_api_settings a WHERE shop_id = 'tea'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if strings.Count(stored, secrets.Prefix) != 3 {
		t.Errorf("stored: %q", stored)
	}
	// Nowhere in what the API answered or logged, nor in the audit log.
	audit := b.audit(t, "shop.create")
	everything := r.body + got.body + logs.String() + string(audit[0].Details)
	for _, s := range []string{llmKey, apiKey, webhookKey} {
		if strings.Contains(everything, s) || strings.Contains(stored, s) {
			t.Errorf("%s appears in an answer, a log line, the audit log or a column", s)
		}
	}
	if !strings.Contains(logs.String(), "shop settings changed") {
		t.Errorf("the logs were not captured: %s", logs.String())
	}
}
