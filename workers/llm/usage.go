package llm

import (
	"context"
	"sync"
)

// Usage reporting. An http.RoundTripper under a Client that charges calls
// against a token budget (the worker's provider budget) learns what a call
// used from the Client, which has parsed the provider's answer with
// openai-go, rather than by reading the body itself: it registers with
// OnUsage for the call its request belongs to, and the Client reports once
// the call is over.

type usageKey struct{}

// usageReport is one Client call's usage, told to whoever registered for it.
type usageReport struct {
	mu     sync.Mutex
	fns    []func(int)
	done   bool
	tokens int
}

// withUsageReport returns ctx for one Client call, and its report.
func withUsageReport(ctx context.Context) (context.Context, *usageReport) {
	r := &usageReport{}
	return context.WithValue(ctx, usageKey{}, r), r
}

// OnUsage registers fn to be told, once, how many tokens (prompt plus
// completion) the Client call that ctx belongs to used, as the provider
// reported them, or -1 when it reported none (a call that failed or broke
// off, a provider that sends no usage). It reports false, and never calls
// fn, when ctx belongs to no Client call.
func OnUsage(ctx context.Context, fn func(tokens int)) bool {
	r, ok := ctx.Value(usageKey{}).(*usageReport)
	if !ok {
		return false
	}
	r.mu.Lock()
	if r.done {
		tokens := r.tokens
		r.mu.Unlock()
		fn(tokens)
		return true
	}
	r.fns = append(r.fns, fn)
	r.mu.Unlock()
	return true
}

// report tells the call's usage to those registered, the first time only:
// the Client reports what it parsed, then -1 for a call that ended without.
func (r *usageReport) report(tokens int) {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done, r.tokens = true, tokens
	fns := r.fns
	r.fns = nil
	r.mu.Unlock()
	for _, fn := range fns {
		fn(tokens)
	}
}

// usedTokens is what a call reports: prompt plus completion tokens, -1 when
// the provider reported none.
func usedTokens(prompt, completion int64) int {
	if prompt+completion <= 0 {
		return -1
	}
	return int(prompt + completion)
}
