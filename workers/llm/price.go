package llm

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Price is what a model costs, in US dollars per million tokens.
type Price struct {
	InputPerMTok  float64
	OutputPerMTok float64
}

// Prices is the price table by model name.
type Prices map[string]Price

// ParsePrices parses a price table written as
// "model=input/output,other=input/output", prices in USD per million tokens,
// e.g. "gpt-4o-mini=0.15/0.6,deepseek-chat=0.27/1.1". An empty string is an
// empty table.
func ParsePrices(s string) (Prices, error) {
	p := Prices{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		model, rest, ok := strings.Cut(item, "=")
		model = strings.TrimSpace(model)
		in, out, ok2 := strings.Cut(rest, "/")
		if !ok || !ok2 || model == "" {
			return nil, fmt.Errorf("llm: prices: %q is not model=input/output", item)
		}
		ip, err1 := parsePrice(in)
		op, err2 := parsePrice(out)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("llm: prices: %q: prices must be non-negative numbers", item)
		}
		if _, dup := p[model]; dup {
			return nil, fmt.Errorf("llm: prices: model %q given twice", model)
		}
		p[model] = Price{InputPerMTok: ip, OutputPerMTok: op}
	}
	return p, nil
}

func parsePrice(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("bad price %q", s)
	}
	return v, nil
}

// CostMicroUSD returns what prompt and completion tokens of model cost, in
// millionths of a dollar (a dollar per million tokens is a micro-dollar per
// token). A model missing from the table costs 0; ok tells whether it was
// found.
func (p Prices) CostMicroUSD(model string, prompt, completion int) (cost int64, ok bool) {
	price, ok := p[model]
	if !ok {
		return 0, false
	}
	return int64(math.Round(float64(prompt)*price.InputPerMTok + float64(completion)*price.OutputPerMTok)), true
}

// DefaultFXRates is the rate table used when none is configured.
const DefaultFXRates = "CNY=7.2"

// FXRates converts US dollars into other currencies: units of a currency per
// US dollar by ISO 4217 code (e.g. "CNY": 7.2). USD is always 1.
type FXRates map[string]float64

// ParseFXRates parses a rate table written "CNY=7.2,EUR=0.92": units of each
// currency per US dollar. A malformed entry is an error naming it; an empty
// string is a table with USD only.
func ParseFXRates(s string) (FXRates, error) {
	r := FXRates{"USD": 1}
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		code, rate, ok := strings.Cut(item, "=")
		code = strings.TrimSpace(code)
		if !ok || !isCurrency(code) {
			return nil, fmt.Errorf("llm: fx rates: %q is not CODE=rate with a 3-letter ISO 4217 code", item)
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rate), 64)
		if err != nil || !(v > 0) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("llm: fx rates: %q: the rate must be a positive number", item)
		}
		if seen[code] {
			return nil, fmt.Errorf("llm: fx rates: currency %q given twice", code)
		}
		if code == "USD" && v != 1 {
			return nil, fmt.Errorf("llm: fx rates: %q: USD is 1 by definition", item)
		}
		seen[code] = true
		r[code] = v
	}
	return r, nil
}

func isCurrency(s string) bool {
	if len(s) != 3 {
		return false
	}
	for _, c := range s {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// MicroUnits converts micro-dollars into millionths of currency's unit
// (micro-yuan for CNY); ok is false when the table has no rate for it.
func (r FXRates) MicroUnits(currency string, microUSD int64) (micro int64, ok bool) {
	rate, ok := r[currency]
	if !ok {
		return 0, false
	}
	return int64(math.Round(float64(microUSD) * rate)), true
}
