package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
)

// The console runs as a process of its own (`serve --roles dashboard`): an
// operator added with `peakdesk operator add` logs in, and the overview
// shows the answers the ingest and worker process give, read from
// JetStream, Postgres and the metric snapshots in Redis, never from the
// other process's memory.
func TestConsoleInItsOwnProcessSeesTheDeskWork(t *testing.T) {
	t.Parallel()
	b := setup(t, llmsim.Faults{})
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	prefix := "pdtest:" + hex.EncodeToString(rb[:]) + ":"
	withPrefix := func(c *Config) {
		c.SnapshotPrefix = prefix
		c.ConsoleSampleInterval = 300 * time.Millisecond
	}
	desk := b.start(t, []string{roleIngest, roleWorker}, withPrefix)
	console := b.start(t, []string{roleDashboard}, withPrefix)

	var out bytes.Buffer
	err := runOperator(context.Background(), []string{"add", "--email", "Ops@Example.com", "--role", "operator",
		"--password-stdin"}, strings.NewReader("a long enough password\n"), &out, io.Discard,
		func(k string) string { return map[string]string{"DATABASE_URL": b.dbURL}[k] })
	if err != nil || !strings.Contains(out.String(), "operator ops@example.com added: operator of every shop") {
		t.Fatalf("operator add: %v %s", err, out.String())
	}
	out.Reset()
	if err := runOperator(context.Background(), []string{"add", "--email", "viewer@example.com", "--role", "viewer",
		"--shop", "demo"}, strings.NewReader(""), &out, io.Discard,
		func(k string) string { return map[string]string{"DATABASE_URL": b.dbURL}[k] }); err != nil ||
		!regexp.MustCompile(`password \(shown once\): \S{20,}`).MatchString(out.String()) {
		t.Fatalf("operator add with a generated password: %v %s", err, out.String())
	}

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	base := "http://" + console.Addr()
	resp, err := client.PostForm(base+"/console/login", url.Values{"email": {"ops@example.com"}, "password": {"a long enough password"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `id="live"`) {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}

	tok := bearer(t, "demo", "alice")
	for i := range 20 {
		r := call(t, http.MethodPost, "http://"+desk.Addr()+"/v1/messages?wait=5s", tok,
			jsonBody(t, map[string]any{"text": fmt.Sprintf("what is the return policy %d", i)}))
		if r.status != http.StatusOK && r.status != http.StatusAccepted {
			t.Fatalf("post: %d %s", r.status, r.raw)
		}
	}
	answers := regexp.MustCompile(`id="answers-rate">([0-9.,]+)<`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/console/overview/live", nil)
		req.Header.Set("HX-Request", "true")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := answers.FindStringSubmatch(string(body))
		if m != nil && m[1] != "0" && strings.Contains(string(body), "worker processes: 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console never saw the answers: %s", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
