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
