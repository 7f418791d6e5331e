package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/faq"
)

// devWebhookSecret signs the demo shop's reply webhooks in dev mode.
const devWebhookSecret = "peakdesk-dev-webhook-secret"

// startShopAPI makes the shop API client: the configured base URL, or in
// dev the built-in simulated shop behind a loopback listener, so the real
// client code path is the same in both.
func (p *Program) startShopAPI(ctx context.Context) error {
	base := p.Config.ShopAPIURL
	allowPrivate := p.Config.AllowPrivateShopURLs
	var sim *shopsim.Sim
	if base == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("simulated shop: %w", err)
		}
		sim = shopsim.New(shopsim.Faults{LatencyMS: 50}, []byte(devWebhookSecret))
		p.shopSrv = &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = p.shopSrv.Serve(ln) }()
		base = "http://" + ln.Addr().String()
		p.Log.Info("using the built-in simulated shop API (set PEAKDESK_SHOP_API_URL for a real one)", "url", base)
		if !allowPrivate {
			p.Log.Warn("allowing private shop URLs: the built-in simulated shop listens on loopback")
			allowPrivate = true
		}
	}
	var err error
	p.shop, err = shopapi.New(shopapi.Config{DB: p.db, DefaultBaseURL: base, AllowPrivate: allowPrivate})
	if err != nil {
		return err
	}
	if sim != nil && p.Config.Dev {
		// The demo shop's reply webhooks go to the simulator's receiver,
		// signed with the secret it knows.
		if err := p.shop.PutSettings(ctx, storage.ShopAPISettings{ShopID: "demo",
			WebhookURL: base + "/webhooks/replies", WebhookSecret: devWebhookSecret}); err != nil {
			return err
		}
	}
	return nil
}

// The customer the dev demo page (/demo) is signed in as, and an order of
// the simulated shop's catalogue it owns (shopsim.CatalogueOrder: the
// owner is "u" + the id's last digit).
const (
	demoCustomer = "u6"
	demoOrder    = "1234567890123456"
)

// seedDemo gives the dev shop "demo" its FAQ (kept if already there).
func seedDemo(ctx context.Context, db *storage.DB) error {
	if _, err := db.ImportFAQ(ctx, "demo", faq.DemoEntries(), false); err != nil {
		return fmt.Errorf("seed demo FAQ: %w", err)
	}
	return nil
}

// edgeFAQ lets the edge shed load with the FAQ engine's confident answers.
type edgeFAQ struct{ e *faq.Engine }

func (f edgeFAQ) Answer(ctx context.Context, shop, question string) (string, bool) {
	if f.e == nil {
		return "", false
	}
	m, ok := f.e.Search(ctx, shop, question)
	return m.Answer, ok
}
