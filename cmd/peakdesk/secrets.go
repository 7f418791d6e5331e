package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/secrets"
	"github.com/peakdesk/peakdesk/storage/shopwatch"
)

// devMasterKey seals secrets in dev mode (and for the CLI) when
// PEAKDESK_MASTER_KEY is unset. It is public, so whoever uses it is warned,
// and serve refuses to store secrets without a key of its own.
var devMasterKey = sha256.Sum256([]byte("peakdesk dev-only master key; never use it in production"))

// devMasterKeyHex is devMasterKey as PEAKDESK_MASTER_KEY spells it, for the
// commands that run serve's roles against the dev database (bench).
func devMasterKeyHex() string { return hex.EncodeToString(devMasterKey[:]) }

// masterKeys parses the master key and the previous ones; a nil Box when
// key is empty.
func masterKeys(key string, previous []string) (*secrets.Box, error) {
	if key == "" {
		if len(previous) > 0 {
			return nil, errors.New("config: PEAKDESK_MASTER_KEY_PREVIOUS is set without PEAKDESK_MASTER_KEY")
		}
		return nil, nil
	}
	cur, err := secrets.ParseKey(key)
	if err != nil {
		return nil, fmt.Errorf("config: PEAKDESK_MASTER_KEY: %w", err)
	}
	var prev [][]byte
	for i, p := range previous {
		k, err := secrets.ParseKey(p)
		if err != nil {
			return nil, fmt.Errorf("config: PEAKDESK_MASTER_KEY_PREVIOUS[%d]: %w", i, err)
		}
		prev = append(prev, k)
	}
	return secrets.New(cur, prev...)
}

// useSecrets gives the database its master key and seals what is not
// sealed with it yet: secrets stored before encryption (plaintext) and
// under a previous key. Every process with the key does it at start
// (idempotent, safe in parallel). serve without a key refuses to start if
// the database holds any secret, and otherwise runs unable to store one:
// creating a shop then fails, naming PEAKDESK_MASTER_KEY. dev falls back to
// the dev-only key.
func (p *Program) useSecrets(ctx context.Context) error {
	box, err := masterKeys(p.Config.MasterKey, p.Config.MasterKeyPrevious) // validated
	if err != nil {
		return err
	}
	if box == nil && p.Config.Dev {
		p.Log.Warn("PEAKDESK_MASTER_KEY is unset: dev mode seals shop secrets with a public dev-only key")
		box, _ = secrets.New(devMasterKey[:])
	}
	if box == nil {
		has, err := p.db.HasSecrets(ctx)
		if err != nil {
			return err
		}
		if has {
			return errors.New("config: PEAKDESK_MASTER_KEY is required: the database holds shop secrets " +
				"(webhook, shop API, LLM and signing keys), which are stored encrypted under it")
		}
		p.Log.Warn("PEAKDESK_MASTER_KEY is unset: shop secrets cannot be stored, so shops cannot be created")
		p.db.UseSecrets(nil)
		return nil
	}
	p.db.UseSecrets(box)
	n, err := p.db.SealSecrets(ctx)
	if err != nil {
		return fmt.Errorf("sealing the shops' secrets under PEAKDESK_MASTER_KEY (is the key that sealed them in "+
			"PEAKDESK_MASTER_KEY_PREVIOUS?): %w", err)
	}
	if n > 0 {
		p.Log.Info("shop secrets sealed under the master key", "sealed", n, "key_id", box.KeyID())
	}
	return nil
}

// watchSettings starts the settings notifications and points them at every
// cache of the process: a changed shop setting applies here at once.
func (p *Program) watchSettings(ctx context.Context, auth *token.Authenticator) error {
	var err error
	if p.watch, err = shopwatch.New(shopwatch.Config{DB: p.db, Logger: p.Log}); err != nil {
		return err
	}
	p.watch.Subscribe(auth.ForgetShop)
	if p.shop != nil {
		p.watch.Subscribe(p.shop.ForgetShop)
	}
	if p.faq != nil {
		p.watch.Subscribe(p.faq.Changed)
	}
	if p.edge != nil {
		p.watch.Subscribe(p.edge.ForgetShop)
	}
	if p.answerer != nil {
		p.watch.Subscribe(p.answerer.ForgetShop)
	}
	return p.watch.Start(ctx)
}

// openSecretsDB opens the database for a command that reads or writes shop
// secrets, with the master key of the environment (or, unset, the dev-only
// key, with a warning on stderr, as `token` does with the JWT secret).
func openSecretsDB(ctx context.Context, dbURL string, getenv func(string) string, stderr io.Writer) (*storage.DB, error) {
	box, err := masterKeys(getenv("PEAKDESK_MASTER_KEY"), splitSecrets(getenv("PEAKDESK_MASTER_KEY_PREVIOUS")))
	if err != nil {
		return nil, err
	}
	dev := box == nil
	if dev {
		fmt.Fprintln(stderr, "PEAKDESK_MASTER_KEY is unset; using the dev-only master key")
		box, _ = secrets.New(devMasterKey[:])
	}
	db, err := storage.Open(ctx, dbURL, 2)
	if err != nil {
		return nil, err
	}
	db.UseSecrets(box)
	if dev {
		// A forgotten variable must not seal new secrets under the public
		// key beside ones sealed under the real key.
		elsewhere, err := db.SealedElsewhere(ctx)
		if err == nil && elsewhere {
			err = errors.New("PEAKDESK_MASTER_KEY is required: the database's secrets are sealed under a master key")
		}
		if err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}
