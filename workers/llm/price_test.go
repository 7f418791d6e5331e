package llm_test

import (
	"fmt"
	"testing"

	"github.com/peakdesk/peakdesk/workers/llm"
)

func TestParsePrices(t *testing.T) {
	t.Parallel()
	p, err := llm.ParsePrices(" gpt-4o-mini=0.15/0.6, deepseek-chat = 0.27/1.1 ,")
	if err != nil {
		t.Fatal(err)
	}
	want := llm.Prices{"gpt-4o-mini": {0.15, 0.6}, "deepseek-chat": {0.27, 1.1}}
	if len(p) != len(want) || p["gpt-4o-mini"] != want["gpt-4o-mini"] || p["deepseek-chat"] != want["deepseek-chat"] {
		t.Errorf("got %v, want %v", p, want)
	}
	for _, bad := range []string{"m=1", "=1/2", "m=1/x", "m=-1/2", "m=1/2,m=3/4", "m:1/2"} {
		if _, err := llm.ParsePrices(bad); err == nil {
			t.Errorf("ParsePrices(%q) accepted", bad)
		}
	}
	if p, err := llm.ParsePrices(""); err != nil || len(p) != 0 {
		t.Errorf("empty: %v %v", p, err)
	}
}

func TestCostMicroUSD(t *testing.T) {
	t.Parallel()
	p := llm.Prices{"m": {InputPerMTok: 0.5, OutputPerMTok: 1.5}}
	// 1,000 prompt tokens at $0.5/MTok = 500 µ$; 200 completion at $1.5 = 300 µ$.
	if got, ok := p.CostMicroUSD("m", 1000, 200); got != 800 || !ok {
		t.Errorf("cost = %d %v, want 800 true", got, ok)
	}
	if got, ok := p.CostMicroUSD("other", 1000, 200); got != 0 || ok {
		t.Errorf("unpriced model cost = %d %v, want 0 false", got, ok)
	}
}

func TestParseModels(t *testing.T) {
	t.Parallel()
	got := llm.ParseModels(" a, b ,,c")
	if len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Errorf("got %q", got)
	}
	if err := (llm.Provider{BaseURL: "http://x", Models: got}).Validate(); err != nil {
		t.Error(err)
	}
	if err := (llm.Provider{BaseURL: "http://x"}).Validate(); err == nil {
		t.Error("a provider without models validated")
	}
}

func ExampleParsePrices() {
	prices, err := llm.ParsePrices("gpt-4o-mini=0.15/0.6,deepseek-chat=0.27/1.1")
	if err != nil {
		panic(err)
	}
	cost, _ := prices.CostMicroUSD("gpt-4o-mini", 1000, 500)
	fmt.Println(cost, "micro-USD")
	// Output: 450 micro-USD
}

func TestParseFXRates(t *testing.T) {
	t.Parallel()
	r, err := llm.ParseFXRates(" CNY=7.2, EUR = 0.92 ,")
	if err != nil {
		t.Fatal(err)
	}
	if len(r) != 3 || r["CNY"] != 7.2 || r["EUR"] != 0.92 || r["USD"] != 1 {
		t.Errorf("got %v", r)
	}
	for _, bad := range []string{"CNY", "CNY=", "CNY=0", "CNY=-7", "CNY=x", "cny=7.2", "CNYY=7", "CNY=7,CNY=8",
		"USD=2", "CNY=NaN", "CNY=+Inf", "CNY:7.2"} {
		if _, err := llm.ParseFXRates(bad); err == nil {
			t.Errorf("ParseFXRates(%q) accepted", bad)
		}
	}
	if r, err := llm.ParseFXRates(""); err != nil || len(r) != 1 || r["USD"] != 1 {
		t.Errorf("empty: %v %v", r, err)
	}
}

func TestFXMicroUnits(t *testing.T) {
	t.Parallel()
	r := llm.FXRates{"USD": 1, "CNY": 7.2}
	// 1,000 µ$ = 7,200 µ¥ = 0.72 fen.
	if got, ok := r.MicroUnits("CNY", 1000); got != 7200 || !ok {
		t.Errorf("CNY: %d %v, want 7200 true", got, ok)
	}
	if got, ok := r.MicroUnits("USD", 1000); got != 1000 || !ok {
		t.Errorf("USD: %d %v", got, ok)
	}
	if _, ok := r.MicroUnits("JPY", 1000); ok {
		t.Error("a currency without a rate converted")
	}
}

func TestEstimatePromptTokensLeansHigh(t *testing.T) {
	t.Parallel()
	turns := []llm.Turn{
		{Role: llm.RoleSystem, Text: "You are the customer-service assistant of the online shop demo."},
		{Role: llm.RoleUser, Text: "双11满减规则是怎样的？可以跨店凑吗？"},
	}
	n := llm.EstimatePromptTokens(turns, nil)
	// The simulator counts a token per CJK character and per word: the
	// estimate must not be below that (a reservation must cover the call).
	if n < 3+2*4+11+19 {
		t.Errorf("estimate %d is below what the simulator counts", n)
	}
	withTools := llm.EstimatePromptTokens(turns, []llm.Tool{{Name: "lookup_order", Description: "Look an order up.",
		Parameters: []byte(`{"type":"object","properties":{"order_id":{"type":"string"}}}`)}})
	if withTools <= n {
		t.Errorf("tools add nothing: %d <= %d", withTools, n)
	}
	if llm.EstimatePromptTokens(nil, nil) <= 0 {
		t.Error("an empty prompt costs nothing")
	}
}
