package queue_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/storage/queue"
)

// A setting that cannot work fails before connecting, naming its variable:
// files are read when connecting, not when the configuration is checked
// (the manifests name files mounted only in the pods).
func TestConnectConfigNamesTheSettingThatCannotWork(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		cfg  queue.ConnectConfig
		want string
	}{
		{queue.ConnectConfig{}, "NATS_URL"},
		{queue.ConnectConfig{URL: "tls://n:4222", Cert: "c.pem"}, "NATS_TLS_CERT and NATS_TLS_KEY"},
		{queue.ConnectConfig{URL: "tls://n:4222", Creds: missing}, "NATS_CREDS"},
		{queue.ConnectConfig{URL: "tls://n:4222", CA: missing}, "NATS_CA"},
		{queue.ConnectConfig{URL: "tls://n:4222", Cert: missing, Key: missing}, "NATS_TLS_CERT"},
	} {
		_, err := tc.cfg.Options()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	if err := (queue.ConnectConfig{URL: "tls://n:4222", CA: missing}).Validate(); err != nil {
		t.Errorf("Validate read a file: %v", err)
	}
}
