package llm_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

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

func TestLinearBackOff(t *testing.T) {
	t.Parallel()
	b := &llm.LinearBackOff{Step: 100 * time.Millisecond, Max: 250 * time.Millisecond}
	var got []time.Duration
	for range 4 {
		got = append(got, b.NextBackOff())
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond, 250 * time.Millisecond}
	if !equalDurations(got, want) {
		t.Errorf("schedule %v, want %v", got, want)
	}
	b.Reset()
	if d := b.NextBackOff(); d != 100*time.Millisecond {
		t.Errorf("after Reset: %v", d)
	}

	// Jitter spreads ±Jitter around step·n: the extremes of the random source.
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{{0, 80 * time.Millisecond}, {0.5, 100 * time.Millisecond}, {0.999999, 120 * time.Millisecond}} {
		j := &llm.LinearBackOff{Step: 100 * time.Millisecond, Jitter: 0.2, Rand: func() float64 { return tc.r }}
		if d := j.NextBackOff(); d < tc.want-time.Microsecond || d > tc.want+time.Microsecond {
			t.Errorf("rand %v: wait %v, want %v", tc.r, d, tc.want)
		}
	}

	// With backoff.WithMaxRetries it stops.
	s := backoff.WithMaxRetries(&llm.LinearBackOff{Step: time.Millisecond}, 2)
	if s.NextBackOff() == backoff.Stop || s.NextBackOff() == backoff.Stop || s.NextBackOff() != backoff.Stop {
		t.Error("WithMaxRetries(2) did not stop after two waits")
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
