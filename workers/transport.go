package workers

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// LLMTransport is an http.RoundTripper for the LLM provider's HTTP client
// that puts every call made for a worker's turn under the process's Limits:
// it waits for the requests/tokens-per-minute budget (most urgent priority
// first) and feeds the call's latency and status (429, 503, 529, timeouts)
// to the adaptive concurrency limit. Because it sits under the client, it
// sees each attempt of a retry loop and each model of a fallback chain,
// which a wrapper around "answer this turn" cannot.
//
// A call's tokens are estimated from its request when it is admitted and
// settled with the usage the llm.Client parsed from the answer (llm.OnUsage);
// a call that reports none keeps the estimate. Calls made outside a worker's
// turn pass through untouched.
type LLMTransport struct {
	next   http.RoundTripper
	limits *Limits
}

// NewLLMTransport returns a transport over next (nil: a clone of
// http.DefaultTransport tuned for many calls to one host) that applies
// limits. Give the Worker the same Limits.
func NewLLMTransport(next http.RoundTripper, limits *Limits) *LLMTransport {
	if next == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns, t.MaxIdleConnsPerHost = 1024, 1024
		next = t
	}
	limits.transports.Add(1)
	return &LLMTransport{next: next, limits: limits}
}

// RoundTrip implements http.RoundTripper.
func (t *LLMTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	prio, ok := priorityFrom(req.Context())
	if !ok {
		return t.next.RoundTrip(req)
	}
	// A JSON prompt has about one token per 3 bytes (CJK) to 4 (English);
	// the completion is guessed; both are settled with the usage reported.
	est := 150
	if req.ContentLength > 0 {
		est += int(req.ContentLength / 3)
	}
	permit, err := t.limits.provider.Wait(req.Context(), prio, est)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	took := time.Since(start)
	switch {
	case err != nil:
		t.limits.observeCall(took, signalOfTransport(req.Context(), err, 0))
		permit.Done(0)
		return nil, err
	case resp.StatusCode >= 300:
		t.limits.observeCall(took, signalOfTransport(req.Context(), nil, resp.StatusCode))
		permit.Done(0)
		return resp, nil
	}
	t.limits.observeCall(took, SignalOK)
	if !llm.OnUsage(req.Context(), permit.Done) {
		permit.Done(-1) // not an llm.Client call: the estimate stands
	}
	return resp, nil
}

func signalOfTransport(ctx context.Context, err error, status int) Signal {
	switch {
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable ||
		status == http.StatusRequestTimeout || status == 529:
		return SignalOverload
	case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return SignalOverload
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return SignalOverload // the call's own timeout
	}
	return SignalIgnore
}

type priorityKey struct{}

// withPriority marks ctx as a call on behalf of a turn of priority p; the
// LLMTransport admits such calls under the budget.
func withPriority(ctx context.Context, p peakdesk.Priority) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

func priorityFrom(ctx context.Context) (peakdesk.Priority, bool) {
	p, ok := ctx.Value(priorityKey{}).(peakdesk.Priority)
	return p, ok
}
