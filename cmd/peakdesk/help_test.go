package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// helpOf runs `peakdesk help <cmd>` and returns what it printed on stdout.
func helpOf(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	var stdout, stderr strings.Builder
	err := run(t.Context(), append([]string{"help"}, args...), &stdout, &stderr, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("help %v: %v (stderr %s)", args, err, stderr.String())
	}
	return stdout.String()
}

// TestHelpTopLevelListsEveryCommand: the usage names every command run
// dispatches, each with a one-line summary.
func TestHelpTopLevelListsEveryCommand(t *testing.T) {
	t.Parallel()
	out := helpOf(t, nil)
	for _, c := range commands {
		if c.summary == "" || strings.Contains(c.summary, "\n") {
			t.Errorf("%s: summary %q, want one line", c.name, c.summary)
		}
		if !strings.Contains(out, "  "+c.name+" ") || !strings.Contains(out, c.summary) {
			t.Errorf("usage lacks %s — %s:\n%s", c.name, c.summary, out)
		}
		if c.name == "help" {
			continue
		}
		// Every listed command is dispatched: an unknown one fails with
		// "unknown command".
		var stdout, stderr strings.Builder
		err := run(t.Context(), []string{c.name, "-h"}, &stdout, &stderr, func(string) string { return "" })
		if err != nil && strings.Contains(err.Error(), "unknown command") {
			t.Errorf("%s is listed but not dispatched", c.name)
		}
	}
}

// TestHelpCommand: `help X` and `X -h` print X's own help, not the
// top-level usage, and succeed.
func TestHelpCommand(t *testing.T) {
	t.Parallel()
	top := topUsage()
	for _, c := range commands {
		if c.name == "help" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			out := helpOf(t, nil, c.name)
			if out == top || strings.Contains(out, "Commands:\n") {
				t.Fatalf("help %s printed the top-level usage:\n%s", c.name, out)
			}
			if !strings.HasPrefix(out, "Usage: peakdesk "+c.name) {
				t.Errorf("help %s does not start with its usage line:\n%s", c.name, out)
			}
			var stdout, stderr strings.Builder
			err := run(t.Context(), []string{c.name, "-h"}, &stdout, &stderr, func(string) string { return "" })
			if err != nil && !errors.Is(err, flag.ErrHelp) {
				t.Errorf("%s -h: %v", c.name, err)
			}
			if got := stdout.String() + stderr.String(); !strings.Contains(got, "Usage: peakdesk "+c.name) {
				t.Errorf("%s -h printed:\n%s", c.name, got)
			}
		})
	}
	if err := run(t.Context(), []string{"help", "nope"}, io.Discard, io.Discard, func(string) string { return "" }); err == nil {
		t.Error("help of an unknown command succeeded")
	}
}

// TestHelpServeIsProduction: serve's help leaves out dev's settings and dev
// wording, marks what production requires and lists the env-only secrets
// by name, never by value; dev's help shows its own settings.
func TestHelpServeIsProduction(t *testing.T) {
	t.Parallel()
	secrets := map[string]string{
		"PEAKDESK_JWT_SECRET":           "jwt-secret-value-0123456789abcdefghij",
		"PEAKDESK_JWT_PREVIOUS_SECRETS": "jwt-previous-value-0123456789abcdefgh",
		"PEAKDESK_LLM_API_KEY":          "llm-api-key-value",
		"PEAKDESK_MASTER_KEY":           "master-key-value",
		"PEAKDESK_MASTER_KEY_PREVIOUS":  "master-previous-value",
		"NATS_TLS_CERT":                 "/secret/cert-path.pem",
		"NATS_TLS_KEY":                  "/secret/key-path.pem",
	}
	serve := helpOf(t, secrets, "serve")
	dev := helpOf(t, secrets, "dev")
	for _, flagName := range []string{"-data-dir", "-nats-sync-always"} {
		if strings.Contains(serve, flagName) {
			t.Errorf("serve -h lists the dev setting %s", flagName)
		}
		if !strings.Contains(dev, flagName) {
			t.Errorf("dev -h lacks %s", flagName)
		}
	}
	if strings.Contains(serve, "in dev") || strings.Contains(serve, "simulator") || strings.Contains(serve, "embedded server") {
		t.Errorf("serve -h has dev wording:\n%s", serve)
	}
	for _, required := range []string{"NATS URL (required)", "(required by the worker role)", "(required by the worker and relay roles)", "PEAKDESK_JWT_SECRET            platform signing key, at least 32 bytes (required)"} {
		if !strings.Contains(serve, required) {
			t.Errorf("serve -h lacks %q", required)
		}
	}
	for name, out := range map[string]string{"serve": serve, "dev": dev} {
		if !strings.Contains(out, "Environment-only settings") {
			t.Errorf("%s -h has no environment-only paragraph", name)
		}
		for k, v := range secrets {
			if !strings.Contains(out, k) {
				t.Errorf("%s -h does not name %s", name, k)
			}
			if strings.Contains(out, v) {
				t.Errorf("%s -h shows the value of %s", name, k)
			}
		}
	}
}

// TestHelpSimulatorsShareNames: mockllm and mockshop take the same flags
// for the same things, as dev and serve do for the listen address; the
// deprecated spellings work but are not shown.
func TestHelpSimulatorsShareNames(t *testing.T) {
	t.Parallel()
	llm, shop, serve := helpOf(t, nil, "mockllm"), helpOf(t, nil, "mockshop"), helpOf(t, nil, "serve")
	for _, name := range []string{"-http-addr", "-latency-jitter", "-error-statuses", "-error-rate", "-latency "} {
		for cmd, out := range map[string]string{"mockllm": llm, "mockshop": shop} {
			if !strings.Contains(out, "  "+name) {
				t.Errorf("%s -h lacks %s", cmd, name)
			}
		}
	}
	if !strings.Contains(serve, "  -http-addr") {
		t.Error("serve -h lacks -http-addr")
	}
	for cmd, out := range map[string]string{"mockllm": llm, "mockshop": shop} {
		if strings.Contains(out, "  -addr") || strings.Contains(out, "  -error-status ") {
			t.Errorf("%s -h shows a deprecated flag:\n%s", cmd, out)
		}
		if !strings.Contains(out, "uniform in --latency ± this") {
			t.Errorf("%s -h does not define the jitter as latency ± jitter", cmd)
		}
	}
}

// TestSimulatorsDeprecatedAliases: --addr and mockshop's --error-status
// still parse; bad --error-statuses fail naming the flag.
func TestSimulatorsDeprecatedAliases(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // serve nothing: listen, then stop at once
	var out strings.Builder
	if err := runMockShop(ctx, []string{"--addr", "127.0.0.1:0", "--error-status", "500", "--error-statuses", "500=1,503=3"}, &out, &out); err != nil {
		t.Errorf("mockshop with deprecated flags: %v\n%s", err, out.String())
	}
	if err := runMockLLM(ctx, []string{"--addr", "127.0.0.1:0"}, &out, &out); err != nil {
		t.Errorf("mockllm --addr: %v\n%s", err, out.String())
	}
	if err := runMockShop(ctx, []string{"--http-addr", "127.0.0.1:0", "--error-statuses", "200"}, io.Discard, io.Discard); err == nil {
		t.Error("mockshop --error-statuses 200 accepted")
	}
	if err := runMockShop(ctx, []string{"--http-addr", "127.0.0.1:0", "--error-statuses", "x=1"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "error-statuses") {
		t.Errorf("mockshop --error-statuses x=1: %v", err)
	}
}

// TestLoadtestRefusesDevSecretOffLoopback: without a secret, loadtest
// drives only a loopback target with the dev secret, and says what to set
// for any other.
func TestLoadtestRefusesDevSecretOffLoopback(t *testing.T) {
	t.Parallel()
	none := func(string) string { return "" }
	for _, u := range []string{"https://desk.example.com", "http://10.0.0.5:8080", "http://[2001:db8::1]:8080"} {
		_, err := loadtestSecret(u, "", none)
		if err == nil || !strings.Contains(err.Error(), "PEAKDESK_JWT_SECRET") || !strings.Contains(err.Error(), "--secret") {
			t.Errorf("%s: err %v, want a refusal naming PEAKDESK_JWT_SECRET and --secret", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"} {
		key, err := loadtestSecret(u, "", none)
		if err != nil || string(key) != loadtestDevSecret {
			t.Errorf("%s: %q, %v; want the dev secret", u, key, err)
		}
	}
	key, err := loadtestSecret("https://desk.example.com", "", func(k string) string {
		return map[string]string{"PEAKDESK_JWT_SECRET": "from-env"}[k]
	})
	if err != nil || string(key) != "from-env" {
		t.Errorf("env secret: %q, %v", key, err)
	}
	if key, err := loadtestSecret("https://desk.example.com", "from-flag", none); err != nil || string(key) != "from-flag" {
		t.Errorf("flag secret: %q, %v", key, err)
	}
	// Through the command: it fails before offering any load.
	var out strings.Builder
	err = run(t.Context(), []string{"loadtest", "--url", "https://desk.example.com", "--duration", "1ms"}, &out, &out, none)
	if err == nil || !strings.Contains(err.Error(), "PEAKDESK_JWT_SECRET") {
		t.Errorf("loadtest against a remote URL without a secret: %v", err)
	}
}

// TestMigrateStatus: on an empty database every migration is pending; after
// migrate, every one is applied, in order.
func TestMigrateStatus(t *testing.T) {
	t.Parallel()
	dbURL := storagetest.EmptyDatabaseURL(t)
	env := map[string]string{"DATABASE_URL": dbURL}
	getenv := func(k string) string { return env[k] }
	status := func() []string {
		t.Helper()
		var stdout, stderr strings.Builder
		if err := run(t.Context(), []string{"migrate", "status"}, &stdout, &stderr, getenv); err != nil {
			t.Fatalf("migrate status: %v\n%s", err, stderr.String())
		}
		return strings.Split(strings.TrimSpace(stdout.String()), "\n")
	}
	before := status()
	if len(before) < 2 {
		t.Fatalf("migrate status printed %q", before)
	}
	n := len(before) - 1
	for _, line := range before[:n] {
		if !strings.HasPrefix(line, "pending ") || !strings.Contains(line, ".sql") {
			t.Errorf("before migrate: %q, want pending", line)
		}
	}
	if last := before[n]; !strings.HasSuffix(last, ", "+strconv.Itoa(n)+" pending") {
		t.Errorf("before migrate: summary %q", last)
	}
	if err := run(t.Context(), []string{"migrate"}, io.Discard, io.Discard, getenv); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	after := status()
	if len(after) != len(before) {
		t.Fatalf("after migrate: %d lines, before %d", len(after), len(before))
	}
	for i, line := range after[:n] {
		if !strings.HasPrefix(line, "applied ") || !strings.Contains(line, strings.Fields(before[i])[2]) {
			t.Errorf("after migrate line %d: %q (before %q)", i, line, before[i])
		}
	}
	if last := after[n]; !strings.HasSuffix(last, ", 0 pending") {
		t.Errorf("after migrate: summary %q", last)
	}
	// The storage side agrees, in order.
	db, err := storage.Open(t.Context(), dbURL, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	states, err := db.MigrationStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range states {
		if !s.Applied || s.AppliedAt.IsZero() || (i > 0 && s.Version <= states[i-1].Version) {
			t.Errorf("state %d: %+v", i, s)
		}
	}
}
