package answer_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// keys records the bearer keys a provider receives.
type keys struct {
	next http.Handler
	mu   sync.Mutex
	seen map[string]int
}

func (k *keys) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.seen[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]++
	k.mu.Unlock()
	k.next.ServeHTTP(w, r)
}

func (k *keys) count(key string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.seen[key]
}

// provider serves a simulated LLM with faults f on a port of its own.
func provider(t *testing.T, f llmsim.Faults) (*llmsim.Sim, *keys, *bodies, string) {
	t.Helper()
	sim := llmsim.New(f)
	bs := &bodies{next: sim}
	k := &keys{next: bs, seen: map[string]int{}}
	srv := httptest.NewServer(k)
	t.Cleanup(srv.Close)
	return sim, k, bs, srv.URL + "/v1"
}

// A shop's chain names each model's provider: when the first provider is
// down (503s, then its breaker opens), the chain fails over to a model at
// another provider, with that provider's own key, and the answer's source is
// llm_secondary. The shop's prompt and temperature go with every call.
func TestAChainFailsOverToAnotherProviderWithItsOwnKey(t *testing.T) {
	t.Parallel()
	down, downKeys, _, downURL := provider(t, llmsim.Faults{Outage: true})
	up, upKeys, upBodies, upURL := provider(t, llmsim.Faults{Model: "provider-b-model"})
	a, b := setup(t, llmsim.Faults{}, nil)
	temp := 0.25
	if err := b.db.SetShopLLMSettings(context.Background(), storage.LLMSettings{ShopID: shop,
		SystemPrompt: "You answer for the tea shop {shop} only.", Temperature: &temp,
		Chain: []storage.LLMModel{
			{Model: "chat-a", BaseURL: downURL, APIKey: "sk-provider-a"},
			{Model: "chat-b", BaseURL: upURL, APIKey: "sk-provider-b"},
		}}); err != nil {
		t.Fatal(err)
	}
	ans := mustAnswer(t, a, request(b.clock, "今晚几点开始抢购？"))
	if ans.Source != peakdesk.SourceLLMSecondary || ans.Model != "chat-b" {
		t.Fatalf("answer %+v, want provider B's model as llm_secondary", ans)
	}
	if down.Stats().Requests == 0 || up.Stats().Requests != 1 || b.sim.Stats().Requests != 0 {
		t.Errorf("calls: provider A %d, B %d, default %d", down.Stats().Requests, up.Stats().Requests, b.sim.Stats().Requests)
	}
	if downKeys.count("sk-provider-a") != int(down.Stats().Requests) || upKeys.count("sk-provider-b") != 1 ||
		upKeys.count("sk-provider-a") != 0 || upKeys.count("test-key") != 0 {
		t.Errorf("keys: A saw %v, B saw %v", downKeys.seen, upKeys.seen)
	}
	body := upBodies.all()
	if !strings.Contains(body, `"temperature":0.25`) || !strings.Contains(body, "You answer for the tea shop shop1 only.") {
		t.Errorf("provider B's request lacks the shop's temperature or prompt: %s", body)
	}

	// Provider A's breaker is open: the next answer goes straight to B.
	before := down.Stats().Requests
	ans = mustAnswer(t, a, request(b.clock, "明天还有优惠吗？"))
	if ans.Source != peakdesk.SourceLLMSecondary || down.Stats().Requests != before {
		t.Errorf("answer %+v; provider A called %d more times through an open breaker", ans, down.Stats().Requests-before)
	}
}

// A changed setting applies at once when the Answerer is told (the
// settings notification), not after its cache's lifetime.
func TestForgetShopAppliesAChangedChainAtOnce(t *testing.T) {
	t.Parallel()
	other, _, _, otherURL := provider(t, llmsim.Faults{})
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.SettingsTTL = 1 << 62 })
	if ans := mustAnswer(t, a, request(b.clock, "今晚几点开始抢购？")); ans.Model != "primary" {
		t.Fatalf("before: %+v", ans)
	}
	if err := b.db.SetShopLLMSettings(context.Background(), storage.LLMSettings{ShopID: shop,
		Chain: []storage.LLMModel{{Model: "elsewhere", BaseURL: otherURL}}}); err != nil {
		t.Fatal(err)
	}
	// Different questions: the hot-answer cache does not answer them.
	if ans := mustAnswer(t, a, request(b.clock, "明天还有优惠吗？")); ans.Model != "primary" {
		t.Fatalf("the cache was not in use: %+v", ans)
	}
	a.ForgetShop(shop)
	if ans := mustAnswer(t, a, request(b.clock, "周末发货吗？")); ans.Model != "elsewhere" || other.Stats().Requests != 1 {
		t.Fatalf("after ForgetShop: %+v", ans)
	}
}

// A handoff reply to a question that does not tell its language is in the
// shop's language.
func TestTheHandoffReplyIsInTheShopsLanguage(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{Outage: true}, nil)
	ctx := context.Background()
	if _, err := b.db.UpdateShop(ctx, shop, func(c *storage.ShopConfig) (*storage.AuditEntry, error) {
		c.Language = "en"
		return &storage.AuditEntry{Actor: "t", Scope: "*", Shop: shop, Action: "shop.update"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	a.ForgetShop(shop)
	ans := mustAnswer(t, a, request(b.clock, "123456 ???"))
	if want := texts.Text(texts.EN, texts.HandoffUnavailable, nil); ans.Source != peakdesk.SourceHandoff || ans.Text != want {
		t.Fatalf("answer %+v, want the English handoff %q", ans, want)
	}
}
