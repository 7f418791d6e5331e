package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/secrets"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// testMasterKey seals the shops' secrets in the end-to-end tests.
var testMasterKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, secrets.KeySize))

// simulatedProvider serves a simulated LLM with faults f on a port of its own.
func simulatedProvider(t *testing.T, f llmsim.Faults) (*llmsim.Sim, string) {
	t.Helper()
	sim := llmsim.New(f)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL + "/v1"
}

// An admin gives the demo shop a model chain over two providers through the
// admin API: the first (provider A) is down, the second (provider B, another
// simulated LLM on another port) answers. The customer's answer comes from
// B with source llm_secondary, and neither provider's key is ever shown.
func TestAChainOverTwoProvidersAnswersFromTheSecondWhenTheFirstIsDown(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	provA, urlA := simulatedProvider(t, llmsim.Faults{Outage: true})
	provB, urlB := simulatedProvider(t, llmsim.Faults{})
	p := b.start(t, []string{roleIngest, roleWorker, roleRelay, roleDashboard}, nil)
	base := "http://" + p.Addr()
	admin := bearer(t, "*", "admin-bot", token.ScopeAdmin)

	r := call(t, "PATCH", base+"/v1/admin/shops/demo", admin, []byte(fmt.Sprintf(`{"llm":{"chain":[
		{"model":"model-at-a","base_url":%q,"api_key":"sk-provider-a-secret"},
		{"model":"model-at-b","base_url":%q,"api_key":"sk-provider-b-secret"}]}}`, urlA, urlB)))
	if r.status != http.StatusOK || strings.Contains(string(r.raw), "sk-provider") {
		t.Fatalf("set the chain: %d %s", r.status, r.raw)
	}

	alice := bearer(t, "demo", "alice")
	res := call(t, "POST", base+"/v1/messages?wait=10s", alice, []byte(`{"text":"今晚几点开始抢购？"}`))
	if res.status != http.StatusOK {
		t.Fatalf("post: %d %s", res.status, res.raw)
	}
	reply, _ := res.body["reply"].(map[string]any)
	if reply["source"] != peakdesk.SourceLLMSecondary || reply["model"] != "model-at-b" {
		t.Fatalf("reply %v, want model-at-b as llm_secondary", reply)
	}
	if provA.Stats().Requests == 0 || provB.Stats().Requests != 1 || b.llm.Stats().Requests != 0 {
		t.Errorf("calls: A %d, B %d, the default provider %d", provA.Stats().Requests, provB.Stats().Requests, b.llm.Stats().Requests)
	}
}

// A setting changed through one process (the dashboard role's admin API)
// is applied by the other processes — an edge and a worker, each on its
// own — within 2 s, through the settings notification: their caches would
// otherwise keep the old keyword rules and the old model chain for 30 s.
// "Within 2 s" is checked as: a message sent less than 2 s after the admin
// API confirmed the change is handled with the new setting (how long the
// answer itself takes on a loaded machine does not count).
func TestASettingChangeReachesAnotherProcessWithinTwoSeconds(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	_, urlB := simulatedProvider(t, llmsim.Faults{})
	edge := b.start(t, []string{roleIngest}, nil)
	b.start(t, []string{roleWorker}, nil)
	console := b.start(t, []string{roleDashboard}, nil)
	edgeURL := "http://" + edge.Addr()
	admin := bearer(t, "*", "admin-bot", token.ScopeAdmin)
	n := 0
	// post sends a new customer's message (no per-customer limit is in the
	// way, no answer cache either) and returns the edge's answer.
	post := func(wait string) response {
		t.Helper()
		n++
		r := call(t, "POST", edgeURL+"/v1/messages"+wait, bearer(t, "demo", fmt.Sprintf("cust-%d", n)),
			[]byte(fmt.Sprintf(`{"text":"zzflash sale question number %d"}`, n)))
		if r.status != http.StatusAccepted && r.status != http.StatusOK {
			t.Fatalf("post: %d %s", r.status, r.raw)
		}
		return r
	}
	patch := func(body string) time.Time {
		t.Helper()
		r := call(t, "PATCH", "http://"+console.Addr()+"/v1/admin/shops/demo", admin, []byte(body))
		if r.status != http.StatusOK {
			t.Fatalf("patch %s: %d %s", body, r.status, r.raw)
		}
		return time.Now()
	}
	// until posts messages until ok holds for one, failing if the next
	// message would be sent 2 s or more after changed.
	until := func(what string, changed time.Time, wait string, ok func(response) bool) {
		t.Helper()
		for {
			if time.Since(changed) >= 2*time.Second {
				t.Fatalf("%s: not applied by another process within 2 s", what)
			}
			if ok(post(wait)) {
				t.Logf("%s: applied by another process within %v", what, time.Since(changed))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Both processes have the shop's settings cached: the edge its rules,
	// the worker its LLM route (the default provider's model).
	if got := post("").body["priority"]; got != string(peakdesk.P2) {
		t.Fatalf("before: priority %v", got)
	}
	before := post("?wait=10s")
	if reply, _ := before.body["reply"].(map[string]any); before.status != http.StatusOK || reply["source"] != peakdesk.SourceLLM {
		t.Fatalf("before: %d %s", before.status, before.raw)
	}

	changed := patch(`{"rules":{"p0":["zzflash"]}}`)
	until("the edge's keyword rules", changed, "", func(r response) bool { return r.body["priority"] == string(peakdesk.P0) })

	changed = patch(fmt.Sprintf(`{"llm":{"chain":[{"model":"model-at-b","base_url":%q,"api_key":"sk-b-0123456789"}]}}`, urlB))
	until("the worker's model chain", changed, "?wait=10s", func(r response) bool {
		reply, _ := r.body["reply"].(map[string]any)
		return reply["model"] == "model-at-b"
	})

	// Both changes are audited, naming the fields and not the key.
	conn, err := pgx.Connect(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var details string
	if err := conn.QueryRow(context.Background(), `SELECT string_agg(details::text, ' ' ORDER BY id) FROM operator_audit
		WHERE action = 'shop.update' AND shop = 'demo' AND actor = 'admin-bot'`).Scan(&details); err != nil ||
		!strings.Contains(details, "rules") || !strings.Contains(details, "llm.chain[0].model") || strings.Contains(details, "sk-b-") {
		t.Fatalf("audit %q, %v", details, err)
	}
}

// Secrets written before encryption are sealed when a process with the
// master key starts; a serve without a key refuses a database with secrets.
func TestServeSealsPlaintextSecretsAndRefusesToRunWithoutAKey(t *testing.T) {
	b := setup(t, llmsim.Faults{}) // shops created by a tool without a key: plaintext webhook secrets
	conn, err := pgx.Connect(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var plain string
	if err := conn.QueryRow(context.Background(), `SELECT webhook_secret FROM shop_api_settings WHERE shop_id = 'demo'`).Scan(&plain); err != nil {
		t.Fatal(err)
	}
	if secrets.IsSealed(plain) {
		t.Fatalf("the setup's secret is sealed already: %q", plain)
	}

	cfg := envDefaults(func(k string) string {
		return map[string]string{"DATABASE_URL": b.dbURL, "NATS_URL": b.natsURL, "PEAKDESK_JWT_SECRET": testSecret,
			"PEAKDESK_HTTP_ADDR": "127.0.0.1:0", "PEAKDESK_METRICS_ADDR": "", "PEAKDESK_DATA_DIR": t.TempDir(),
			"REDIS_URL": "redis://127.0.0.1:6379/0"}[k]
	}, false)
	cfg.Roles = []string{roleDashboard}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	p := NewProgram(cfg, storagetest.LogWriter(t))
	err = p.Start(context.Background())
	p.Stop()
	if err == nil || !strings.Contains(err.Error(), "PEAKDESK_MASTER_KEY is required") {
		t.Fatalf("serve without a key: %v", err)
	}

	b.start(t, []string{roleDashboard}, nil)
	var sealed string
	if err := conn.QueryRow(context.Background(), `SELECT webhook_secret FROM shop_api_settings WHERE shop_id = 'demo'`).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	box, _ := masterKeys(testMasterKey, nil)
	if !strings.HasPrefix(sealed, box.CurrentPrefix()) {
		t.Fatalf("after a start with the key: %q", sealed)
	}
	if opened, err := box.Open(sealed, "shop_api_settings.webhook_secret/demo"); err != nil || opened != plain {
		t.Fatalf("the sealed secret opens to %q, %v", opened, err)
	}
}

// `peakdesk shop create|set|show` drive the same administration: the new
// shop's webhook secret is printed once, settings are changed by path, a
// secret comes from standard input, and show masks it.
func TestShopCommands(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	env := map[string]string{"DATABASE_URL": b.dbURL, "PEAKDESK_MASTER_KEY": testMasterKey, "USER": "tester"}
	cmd := func(stdin string, args ...string) (string, string, error) {
		t.Helper()
		var out, errw bytes.Buffer
		err := runShopAdmin(context.Background(), args[0], args[1:], strings.NewReader(stdin), &out, &errw,
			func(k string) string { return env[k] })
		return out.String(), errw.String(), err
	}
	out, _, err := cmd("", "create", "--shop", "cli-shop", "--name", "CLI Shop", "language=en",
		"limits.rate_per_second=20", "webhook.url=https://cli.example/hooks")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"webhook_secret": "`) || !strings.Contains(out, `"rate_per_second": 20`) {
		t.Fatalf("create printed %s", out)
	}
	out, _, err = cmd("sk-from-stdin-0123456789\n", "set", "--shop", "cli-shop", "llm.api_key=@-",
		`llm.chain=[{"model":"m1"}]`, "money.coupon_max_cents=null", "admission.max_wait_p1=45s")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "sk-from-stdin") || !strings.Contains(out, `"api_key": "••••6789"`) ||
		!strings.Contains(out, `"max_wait_p1": "45s"`) {
		t.Fatalf("set printed %s", out)
	}
	if _, _, err := cmd("", "set", "--shop", "cli-shop", "limits.rate_per_secnd=1"); err == nil {
		t.Error("a misspelt field was accepted")
	}
	if _, _, err := cmd("", "set", "--shop", "cli-shop", "webhook.url=https://127.0.0.1/x"); err == nil ||
		!strings.Contains(err.Error(), "loopback") {
		t.Errorf("a loopback webhook: %v", err)
	}
	out, _, err = cmd("", "show", "--shop", "cli-shop")
	if err != nil || !strings.Contains(out, `"model": "m1"`) || strings.Contains(out, "sk-from-stdin") {
		t.Fatalf("show: %s, %v", out, err)
	}
	if _, _, err := cmd("", "show", "--shop", "nosuch"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("show of no shop: %v", err)
	}
	out, _, err = cmd("", "list")
	if err != nil || !strings.Contains(out, "cli-shop\ten\tCNY\tCLI Shop") {
		t.Fatalf("list: %q, %v", out, err)
	}
	// Without the master key, no command falls back to the dev-only key on
	// a database sealed with a real one.
	delete(env, "PEAKDESK_MASTER_KEY")
	if _, _, err := cmd("", "create", "--shop", "cli-shop-2"); err == nil || !strings.Contains(err.Error(), "PEAKDESK_MASTER_KEY is required") {
		t.Errorf("create without the master key: %v", err)
	}
	env["PEAKDESK_MASTER_KEY"] = testMasterKey
	out, _, err = cmd("", "encrypt-secrets")
	if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "secrets sealed") {
		t.Fatalf("encrypt-secrets: %q, %v", out, err)
	}
}
