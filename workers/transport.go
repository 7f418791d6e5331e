package workers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peakdesk/peakdesk"
)

// LLMTransport is an http.RoundTripper for the LLM provider's HTTP client
// that puts every call under a Worker's provider budget and adaptive
// concurrency limit: it waits for the requests/tokens-per-minute budget
// (most urgent priority first) and feeds the call's latency and status
// (429, 503, 529, timeouts) to the AIMD limit. Because it sits under the
// client, it sees each attempt of a retry loop and each model of a fallback
// chain, which a wrapper around "answer this turn" cannot.
//
// Create it first, build the LLM client (or llm.CallerConfig.HTTPClient)
// on it, and pass it in Config.LLMTransport: New binds it to the Worker.
// Until then, and for calls made outside a worker's turn, it passes calls
// through untouched.
type LLMTransport struct {
	next http.RoundTripper
	w    atomic.Pointer[Worker]
}

// NewLLMTransport returns a transport over next (nil: a clone of
// http.DefaultTransport tuned for many calls to one host).
func NewLLMTransport(next http.RoundTripper) *LLMTransport {
	if next == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns, t.MaxIdleConnsPerHost = 1024, 1024
		next = t
	}
	return &LLMTransport{next: next}
}

// RoundTrip implements http.RoundTripper.
func (t *LLMTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	w := t.w.Load()
	prio, ok := priorityFrom(req.Context())
	if w == nil || !ok {
		return t.next.RoundTrip(req)
	}
	// A JSON prompt has about one token per 3 bytes (CJK) to 4 (English);
	// the completion is guessed; both are settled with the usage reported.
	est := 150
	if req.ContentLength > 0 {
		est += int(req.ContentLength / 3)
	}
	permit, err := w.limiter.Wait(req.Context(), prio, est)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	took := time.Since(start)
	switch {
	case err != nil:
		w.observeCall(took, signalOfTransport(req.Context(), err, 0))
		permit.Done(0)
		return nil, err
	case resp.StatusCode >= 300:
		w.observeCall(took, signalOfTransport(req.Context(), nil, resp.StatusCode))
		permit.Done(0)
		return resp, nil
	}
	w.observeCall(took, SignalOK)
	resp.Body = &usageBody{ReadCloser: resp.Body, done: permit.Done}
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

// usageBody settles a permit with the usage the provider reports at the end
// of its answer (plain JSON or the last chunk of a stream).
type usageBody struct {
	io.ReadCloser
	done func(int)
	mu   sync.Mutex
	tail []byte
	once sync.Once
}

var (
	promptTokensRE     = regexp.MustCompile(`"prompt_tokens"\s*:\s*(\d+)`)
	completionTokensRE = regexp.MustCompile(`"completion_tokens"\s*:\s*(\d+)`)
)

func (b *usageBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.mu.Lock()
	b.tail = append(b.tail, p[:n]...)
	if len(b.tail) > 4096 {
		b.tail = append(b.tail[:0], b.tail[len(b.tail)-2048:]...)
	}
	b.mu.Unlock()
	if err == io.EOF {
		b.settle()
	}
	return n, err
}

func (b *usageBody) Close() error {
	b.settle()
	return b.ReadCloser.Close()
}

func (b *usageBody) settle() {
	b.once.Do(func() {
		b.mu.Lock()
		tail := bytes.Clone(b.tail)
		b.mu.Unlock()
		used := -1 // not reported: keep the estimate
		if p := lastNumber(promptTokensRE, tail); p >= 0 {
			used = p + max(lastNumber(completionTokensRE, tail), 0)
		}
		b.done(used)
	})
}

func lastNumber(re *regexp.Regexp, b []byte) int {
	all := re.FindAllSubmatch(b, -1)
	if len(all) == 0 {
		return -1
	}
	n, err := strconv.Atoi(string(all[len(all)-1][1]))
	if err != nil {
		return -1
	}
	return n
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
