// Command natskeys makes the nkeys of peakdesk's NATS users
// (deploy/k8s/nats/auth.conf): a seed file per role, each role's
// NATS_CREDS, and nkeys.env with their public keys, which the NATS servers
// read (PEAKDESK_NKEY_<ROLE>). Seeds are secrets: keep them in your secret
// store and mount each role's alone.
//
//	go run ./deploy/natskeys --out keys
//	kubectl -n peakdesk create configmap nats-users --from-env-file=keys/nkeys.env
//	kubectl -n peakdesk create secret generic nats-user-worker --from-file=creds=keys/worker.nk   # and so for each role
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nkeys"
)

// Roles are the users auth.conf lists.
var Roles = []string{"ingest", "worker", "relay", "dashboard", "admin"}

func main() {
	out := flag.String("out", "keys", "directory to write <role>.nk and nkeys.env to")
	flag.Parse()
	if err := write(*out); err != nil {
		fmt.Fprintln(os.Stderr, "natskeys:", err)
		os.Exit(1)
	}
}

func write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var env strings.Builder
	for _, r := range Roles {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return err
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return err
		}
		seed, err := kp.Seed()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, r+".nk"), append(seed, '\n'), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(&env, "PEAKDESK_NKEY_%s=%s\n", strings.ToUpper(r), pub)
	}
	return os.WriteFile(filepath.Join(dir, "nkeys.env"), []byte(env.String()), 0o644)
}
