package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
)

// Every reply reaches the shop's webhook signed with the shop's secret and
// the time it was sent; the shop verifies it, and refuses the very same
// request sent again.
func TestReplyWebhooksAreSignedAndCannotBeReplayed(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	const secret = "e2e-webhook-secret" // the simulated shop's
	db, err := storage.Open(context.Background(), b.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	err = db.PutShopAPISettings(context.Background(), storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: b.shopURL + "/webhooks/replies", WebhookSecret: secret})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := b.start(t, []string{roleIngest, roleWorker, roleRelay}, nil)
	base := "http://" + p.Addr()

	r := call(t, "POST", base+"/v1/messages?wait=10s", bearer(t, "demo", "alice"),
		[]byte(`{"text":"双11满减怎么算？ webhook-e2e"}`))
	if r.status != http.StatusOK {
		t.Fatalf("post: %d %s", r.status, r.raw)
	}
	replyID := r.body["reply"].(map[string]any)["reply_id"].(string)

	var got shopsim.Webhook
	deadline := time.Now().Add(20 * time.Second)
	for got.Signature == "" {
		for _, wh := range b.shop.Webhooks() {
			if strings.Contains(string(wh.Body), replyID) {
				got = wh
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no webhook for reply %s; the shop got %+v", replyID, b.shop.Webhooks())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !got.SignatureValid || got.Refused != "" || got.Duplicate || got.Shop != "demo" {
		t.Fatalf("delivery %+v", got)
	}
	if _, err := shopapi.VerifyWebhook([]byte(secret), got.Signature, got.Body, time.Now(), 0); err != nil {
		t.Fatalf("signature %q: %v", got.Signature, err)
	}

	// Someone who captured the request sends it again.
	req, _ := http.NewRequest("POST", b.shopURL+"/webhooks/replies", strings.NewReader(string(got.Body)))
	req.Header.Set(shopapi.SignatureHeader, got.Signature)
	req.Header.Set(shopapi.EventIDHeader, got.EventID)
	req.Header.Set("Idempotency-Key", got.IdempotencyKey)
	req.Header.Set(shopapi.ShopHeader, "demo")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), shopsim.WebhookReplayed) {
		t.Fatalf("replay: %d %s, want 409 %s", resp.StatusCode, body, shopsim.WebhookReplayed)
	}
	if st := b.shop.Stats(); st.WebhookReplays != 1 || st.WebhookBadSignatures != 0 || st.WebhookStale != 0 {
		t.Errorf("shop stats %+v", st)
	}
}

// Shop URLs must be https unless private URLs are allowed, which dev is by
// default, and a malformed switch is an error that names it.
func TestShopURLConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		dev  bool
		env  map[string]string
		want string // "" = valid
	}{
		{"https", false, map[string]string{"PEAKDESK_SHOP_API_URL": "https://shop.example.com"}, ""},
		{"plain http", false, map[string]string{"PEAKDESK_SHOP_API_URL": "http://shop.example.com"},
			"PEAKDESK_SHOP_API_URL: shop url refused: plain http is not allowed"},
		{"loopback", false, map[string]string{"PEAKDESK_SHOP_API_URL": "https://127.0.0.1:8091"},
			"PEAKDESK_SHOP_API_URL: shop url refused: 127.0.0.1 is a loopback address"},
		{"allowed", false, map[string]string{"PEAKDESK_SHOP_API_URL": "http://127.0.0.1:8091",
			"PEAKDESK_ALLOW_PRIVATE_SHOP_URLS": "true"}, ""},
		{"dev allows", true, map[string]string{"PEAKDESK_SHOP_API_URL": "http://127.0.0.1:8091"}, ""},
		{"dev switched off", true, map[string]string{"PEAKDESK_SHOP_API_URL": "http://127.0.0.1:8091",
			"PEAKDESK_ALLOW_PRIVATE_SHOP_URLS": "false"}, "plain http is not allowed"},
		{"malformed switch", false, map[string]string{"PEAKDESK_SHOP_API_URL": "https://shop.example.com",
			"PEAKDESK_ALLOW_PRIVATE_SHOP_URLS": "yes please"}, `PEAKDESK_ALLOW_PRIVATE_SHOP_URLS: want true or false, got "yes please"`},
	}
	for _, tc := range tests {
		env := map[string]string{"PEAKDESK_JWT_SECRET": testSecret, "NATS_URL": "nats://127.0.0.1:4222",
			"PEAKDESK_LLM_BASE_URL": "https://llm.example.com/v1"}
		for k, v := range tc.env {
			env[k] = v
		}
		_, err := parseFlags("serve", nil, io.Discard, func(k string) string { return env[k] }, tc.dev)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
