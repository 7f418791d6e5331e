package main

import (
	"strings"
	"testing"
)

// A malformed setting stops the program with an error that names it; it is
// never silently replaced by its default.
func TestMalformedEnvironmentIsRefused(t *testing.T) {
	t.Parallel()
	for name, value := range map[string]string{
		"PEAKDESK_WORKER_CONCURRENCY":    "abc",
		"PEAKDESK_ACK_WAIT":              "5",
		"PEAKDESK_LOG_LEVEL":             "loud",
		"PEAKDESK_LOG_FORMAT":            "yaml",
		"PEAKDESK_PUBLISH_BATCH":         "yes please",
		"PEAKDESK_ADMISSION_MAX_WAIT_P2": "soon",
		"PEAKDESK_ADMISSION_MIN_BACKLOG": "-3",
		"PEAKDESK_MAX_STREAMS":           "10k",
		"PEAKDESK_MAX_INFLIGHT":          "0",
		"PEAKDESK_SHED_FAQ_CACHE_TTL":    "-1s",
		"PEAKDESK_SHED_WRITER_BATCH":     "lots",
		"PEAKDESK_DEV_ORIGINS":           "http://localhost:3000,localhost:5173",
		"PEAKDESK_STREAM_OPENS":          "0",
		"PEAKDESK_STREAM_OPEN_WAIT":      "-1s",
	} {
		env := map[string]string{name: value}
		c := envDefaults(func(k string) string { return env[k] }, true)
		err := c.validate()
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: %v; want an error naming %s", name, value, err, name)
		}
	}
	ok := envDefaults(func(k string) string {
		return map[string]string{"PEAKDESK_WORKER_CONCURRENCY": "32", "PEAKDESK_ADMISSION_MAX_WAIT_P2": "45s",
			"PEAKDESK_LOG_LEVEL": "debug"}[k]
	}, true)
	if err := ok.validate(); err != nil || ok.WorkerConcurrency != 32 || ok.AdmissionMaxWaitP2.Seconds() != 45 {
		t.Fatalf("well-formed settings: %+v, %v", ok, err)
	}
}

// Help texts never show the database password.
func TestHelpHidesPasswords(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://peakdesk:s3cret-pw@db:5432/peakdesk",
		"REDIS_URL": "redis://:r3dis-pw@cache:6379/0"}
	getenv := func(k string) string { return env[k] }
	var out strings.Builder
	_, _ = parseFlags("serve", []string{"-h"}, &out, getenv, false)
	_ = runMigrate(t.Context(), []string{"-h"}, &out, &out, getenv)
	if strings.Contains(out.String(), "s3cret-pw") || strings.Contains(out.String(), "r3dis-pw") ||
		!strings.Contains(out.String(), "database-url") {
		t.Fatalf("help shows a password:\n%s", out.String())
	}
}
