package queue

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnectConfig says how a process reaches NATS and who it is there.
type ConnectConfig struct {
	// URL is one or more comma-separated server URLs. It may carry a user
	// and password (nats://user:pass@host:4222); tls:// requires TLS.
	URL string
	// Name is the client name the server shows (monitoring, logs).
	Name string
	// Creds is a file holding the process's credentials: a .creds file (a
	// user JWT and its nkey seed, for servers with JWT accounts) or an nkey
	// seed file (for servers whose config lists users by nkey, like
	// deploy/k8s/nats/auth.conf). Empty: none, or the URL's user.
	Creds string
	// CA is a PEM file of the authorities that sign the servers'
	// certificates. Setting it requires TLS.
	CA string
	// Cert and Key are a client certificate and its key, for servers that
	// verify clients (mutual TLS). Both or neither.
	Cert, Key string
	// InboxPrefix is where replies to this process's requests arrive
	// (JetStream API answers, publish acks, pulled messages). A user allowed
	// to subscribe only below its own prefix cannot read what other roles
	// pull. Default "_INBOX"; see InboxPrefix.
	InboxPrefix string
}

// InboxPrefix is the reply-subject prefix of a process with the given
// roles: "_INBOX.<role>" for one role (the per-role users of
// deploy/k8s/nats/auth.conf may subscribe there only), "_INBOX" for several.
func InboxPrefix(roles ...string) string {
	if len(roles) == 1 {
		return "_INBOX." + roles[0]
	}
	return "_INBOX"
}

// Validate reports the first setting that cannot work, naming it. Files
// are read when connecting (a missing one fails Connect, naming it).
func (c ConnectConfig) Validate() error {
	if c.URL == "" {
		return errors.New("queue: NATS_URL is empty")
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("queue: NATS_TLS_CERT and NATS_TLS_KEY go together")
	}
	return nil
}

// Options turns c into nats.go options. It reads the files c names, and a
// missing one fails naming its variable.
func (c ConnectConfig) Options() ([]nats.Option, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, path string }{{"NATS_CA", c.CA}, {"NATS_TLS_CERT", c.Cert}, {"NATS_TLS_KEY", c.Key}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("queue: %s: %w", f.name, err)
		}
	}
	opts := []nats.Option{nats.Name(c.Name)}
	if c.InboxPrefix != "" && c.InboxPrefix != "_INBOX" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	if c.Creds != "" {
		b, err := os.ReadFile(c.Creds)
		if err != nil {
			return nil, fmt.Errorf("queue: NATS_CREDS: %w", err)
		}
		if bytes.Contains(b, []byte("BEGIN NATS USER JWT")) {
			opts = append(opts, nats.UserCredentials(c.Creds))
		} else {
			o, err := nats.NkeyOptionFromSeed(c.Creds)
			if err != nil {
				return nil, fmt.Errorf("queue: NATS_CREDS: not a .creds file nor an nkey seed: %w", err)
			}
			opts = append(opts, o)
		}
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.Cert != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	return opts, nil
}

// Connect connects with c and reconnects for ever: a process outlives any
// one server of a cluster, and every server's restart.
func Connect(c ConnectConfig, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	nc, err := nats.Connect(c.URL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("queue: connect nats: %w", err)
	}
	return nc, nil
}
