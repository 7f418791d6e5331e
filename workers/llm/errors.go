package llm

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
)

// Outcomes of one LLM call, the outcome label of peakdesk_llm_calls_total.
const (
	OutcomeOK          = "ok"
	OutcomeRateLimited = "rate_limited"       // 429: retried, honouring Retry-After
	OutcomeOverloaded  = "overloaded"         // 529: retried
	OutcomeServerError = "server_error"       // other 5xx, empty answers: retried
	OutcomeTimeout     = "timeout"            // 408 or our own call timeout: retried
	OutcomeNetwork     = "network"            // connection errors: retried
	OutcomeStreamCut   = "stream_broken"      // a stream broke after text was shown: not retried
	OutcomeQuota       = "insufficient_quota" // the account is out of quota: not retried, its breaker counts it
	OutcomeRejected    = "rejected"           // 400, 401, 403 and other 4xx: not retried (401 and 403 count for the key's breaker)
	OutcomeBreakerOpen = "breaker_open"       // refused by the open breaker, no call made
	OutcomeCanceled    = "canceled"           // the caller went away
)

// verdict is what an error means for the retry loop and the breaker.
type verdict struct {
	outcome string
	// retry: the same model may succeed if asked again.
	retry bool
	// fault: the breaker counts a failure. Breakers are per credential, so
	// a key the provider refuses (401, 403, insufficient_quota) counts:
	// asking again with it is futile, and only that key's breaker opens,
	// not the other shops'. Errors of the request itself (400, 404, 422...)
	// say nothing about the credential and do not count.
	fault bool
}

// classify tells what err, returned by Client.Do, means.
func classify(err error) verdict {
	var apiErr *openai.Error
	switch {
	case err == nil:
		return verdict{outcome: OutcomeOK}
	case errors.Is(err, context.Canceled):
		return verdict{outcome: OutcomeCanceled}
	case errors.Is(err, errBadRequest):
		return verdict{outcome: OutcomeRejected}
	case errors.Is(err, ErrStreamBroken):
		return verdict{outcome: OutcomeStreamCut, fault: true}
	case errors.As(err, &apiErr):
		return classifyStatus(apiErr)
	case errors.Is(err, context.DeadlineExceeded):
		return verdict{outcome: OutcomeTimeout, retry: true, fault: true}
	case errors.Is(err, errEmpty):
		return verdict{outcome: OutcomeServerError, retry: true, fault: true}
	default:
		// Connection refused or reset, a body cut short, a stream that ended
		// before any text: the network or the provider's front door.
		return verdict{outcome: OutcomeNetwork, retry: true, fault: true}
	}
}

func classifyStatus(e *openai.Error) verdict {
	switch s := e.StatusCode; {
	case s == http.StatusTooManyRequests && (e.Code == "insufficient_quota" || e.Type == "insufficient_quota"):
		return verdict{outcome: OutcomeQuota, fault: true}
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		// The key is invalid, revoked or not allowed this model.
		return verdict{outcome: OutcomeRejected, fault: true}
	case s == http.StatusTooManyRequests:
		return verdict{outcome: OutcomeRateLimited, retry: true, fault: true}
	case s == http.StatusRequestTimeout:
		return verdict{outcome: OutcomeTimeout, retry: true, fault: true}
	case s == 529:
		return verdict{outcome: OutcomeOverloaded, retry: true, fault: true}
	case s >= 500:
		return verdict{outcome: OutcomeServerError, retry: true, fault: true}
	default:
		return verdict{outcome: OutcomeRejected}
	}
}

// retryAfter returns the wait the provider asked for with retry-after-ms
// (preferred: it is precise) or Retry-After (seconds or an HTTP date).
func retryAfter(err error, now time.Time) (time.Duration, bool) {
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.Response == nil {
		return 0, false
	}
	h := apiErr.Response.Header
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 && !math.IsInf(ms, 0) && ms < 1e9 {
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || math.IsNaN(secs) || secs > 1e6 {
			return 0, false
		}
		return time.Duration(secs * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
