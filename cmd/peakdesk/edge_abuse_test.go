package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
)

// /metrics is served on its own listener, never on the API port.
func TestMetricsOnlyOnTheMetricsListener(t *testing.T) {
	if got := envDefaults(func(string) string { return "" }, false).MetricsAddr; got != "127.0.0.1:9090" {
		t.Errorf("default metrics address %q", got)
	}
	b := setup(t, llmsim.Faults{})
	p := b.start(t, []string{roleIngest}, nil)
	if p.MetricsAddr() == "" || p.MetricsAddr() == p.Addr() {
		t.Fatalf("metrics on %q, API on %q", p.MetricsAddr(), p.Addr())
	}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if status, _ := get("http://" + p.Addr() + "/metrics"); status != http.StatusNotFound {
		t.Errorf("API port GET /metrics: %d, want 404", status)
	}
	if status, body := get("http://" + p.MetricsAddr() + "/metrics"); status != http.StatusOK ||
		!strings.Contains(body, "peakdesk_ingest_sse_streams") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("metrics port GET /metrics: %d, %d bytes without the edge's metrics", status, len(body))
	}
	if status, _ := get("http://" + p.MetricsAddr() + "/healthz"); status != http.StatusOK {
		t.Errorf("metrics port GET /healthz: %d", status)
	}
	if status, _ := get("http://" + p.MetricsAddr() + "/v1/conversations/0123456789abcdef0123456789abcdef"); status != http.StatusNotFound {
		t.Errorf("the API on the metrics port: %d, want 404", status)
	}
}

// `peakdesk token` signs a shop's tokens with the shop's key from the
// database; `peakdesk shop rotate-key` gives the shop a new one (and its
// secret, for the shop's backend to mint tokens), and the old one keeps
// working through the overlap. A shop key never acts for another shop or as
// an operator; operator tokens come from the platform key.
func TestShopKeysFromTheCommands(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	p := b.start(t, []string{roleIngest, roleDashboard}, nil)
	base := "http://" + p.Addr()
	env := map[string]string{"DATABASE_URL": b.dbURL, "PEAKDESK_JWT_SECRET": testSecret, "PEAKDESK_MASTER_KEY": testMasterKey}
	cmd := func(args ...string) (string, error) {
		t.Helper()
		var out, errw bytes.Buffer
		err := run(context.Background(), args, &out, &errw, func(k string) string { return env[k] })
		if strings.Contains(errw.String(), "secret") && !strings.Contains(errw.String(), "dev-only") {
			t.Errorf("%v wrote about a secret on stderr: %s", args, errw.String())
		}
		return strings.TrimSpace(out.String()), err
	}
	kidOf := func(tok string) string {
		t.Helper()
		parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
		if err != nil {
			t.Fatal(err)
		}
		kid, _ := parsed.Header["kid"].(string)
		return kid
	}
	post := func(tok string) int {
		t.Helper()
		return call(t, "POST", base+"/v1/messages", tok, []byte(`{"text":"hi"}`)).status
	}

	first, err := cmd("token", "--shop", "demo", "--sub", "alice")
	if err != nil {
		t.Fatal(err)
	}
	firstKID := kidOf(first)
	if firstKID == "" {
		t.Fatal("a shop token without a kid")
	}
	if status := post(first); status != http.StatusAccepted {
		t.Fatalf("the shop key's token: %d", status)
	}

	out, err := cmd("shop", "rotate-key", "--shop", "demo", "--show-secret")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 2 || lines[0] == firstKID || len(lines[1]) < 32 {
		t.Fatalf("rotate-key printed %d lines (kid %q), want the new kid and its secret", len(lines), lines[0])
	}
	kid, secret := lines[0], lines[1]
	quiet, err := cmd("shop", "rotate-key", "--shop", "demo", "--overlap", "1h")
	if err != nil || strings.Contains(quiet, "\n") || quiet == kid {
		t.Errorf("rotate-key without --show-secret printed %q (%v), want a new kid alone", quiet, err)
	}
	if current, err := cmd("token", "--shop", "demo", "--sub", "alice"); err != nil || kidOf(current) != quiet {
		t.Errorf("token after the rotation signs with kid %q (%v), want %q", kidOf(current), err, quiet)
	}
	// The shop's backend mints its customers' tokens with the secret.
	own := &storage.ShopKey{KID: kid, ShopID: "demo", Secret: secret}
	mine, err := token.SignWithShopKey(own, "bob", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if status := post(mine); status != http.StatusAccepted {
		t.Errorf("a token the shop minted with its secret: %d", status)
	}
	// The old key works through the overlap.
	if status := post(first); status != http.StatusAccepted {
		t.Errorf("the old key's token within the overlap: %d", status)
	}
	// The demo key claiming shop "other": refused.
	forged, _ := token.SignWithShopKey(&storage.ShopKey{KID: kid, ShopID: "other", Secret: secret}, "bob", nil, time.Hour)
	if status := post(forged); status != http.StatusUnauthorized {
		t.Errorf("demo's key claiming shop other: %d, want 401", status)
	}
	// The demo key minting an operator token: refused by the operator API.
	c := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"shop": "demo", "sub": "mallory", "scope": "ops ops:write",
		"exp": time.Now().Add(time.Hour).Unix()})
	c.Header["kid"] = kid
	shopOps, _ := c.SignedString([]byte(secret))
	if r := call(t, "GET", base+"/v1/ops/dlq", shopOps, nil); r.status != http.StatusUnauthorized {
		t.Errorf("an operator token of a shop key: %d %s, want 401", r.status, r.raw)
	}
	// Operator tokens come from the platform key, with no kid.
	ops, err := cmd("token", "--shop", "*", "--sub", "me", "--scope", "ops")
	if err != nil || kidOf(ops) != "" {
		t.Fatalf("operator token: kid %q, %v", kidOf(ops), err)
	}
	if r := call(t, "GET", base+"/v1/ops/dlq", ops, nil); r.status != http.StatusOK {
		t.Errorf("platform operator token: %d %s", r.status, r.raw)
	}
	if plat, err := cmd("token", "--shop", "demo", "--sub", "alice", "--platform"); err != nil || kidOf(plat) != "" || post(plat) != http.StatusAccepted {
		t.Errorf("--platform token: %v, kid %q", err, kidOf(plat))
	}
	if _, err := cmd("token", "--shop", "nosuchshop", "--sub", "alice"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("token of a missing shop: %v", err)
	}
	if _, err := cmd("shop", "rotate-key", "--shop", "nosuchshop"); err == nil {
		t.Error("rotate-key of a missing shop succeeded")
	}
}
