package peakdesk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
)

// Trace is a W3C trace context (traceparent) carried from the edge through
// JetStream headers into the worker's logs and its calls to the LLM and the
// shop API.
type Trace struct {
	// ID is the 32-hex trace id, the logs' trace_id.
	ID string
	// Parent is the traceparent header to send on.
	Parent string
}

// TraceHeader is the W3C header that carries a Trace.
const TraceHeader = "traceparent"

// ContinueTrace continues the trace of traceparent h when it is well formed
// and starts a new one otherwise; either way with a new span id.
func ContinueTrace(h string) Trace {
	parts := strings.Split(strings.TrimSpace(h), "-")
	id, flags := "", "01"
	if len(parts) == 4 && len(parts[0]) == 2 && len(parts[1]) == 32 && len(parts[2]) == 16 && len(parts[3]) == 2 &&
		isLowerHex(parts[0]) && isLowerHex(parts[1]) && isLowerHex(parts[2]) && isLowerHex(parts[3]) &&
		parts[0] != "ff" && strings.Trim(parts[1], "0") != "" && strings.Trim(parts[2], "0") != "" {
		id, flags = parts[1], parts[3]
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	if id == "" {
		id = hex.EncodeToString(b[:16])
	}
	return Trace{ID: id, Parent: "00-" + id + "-" + hex.EncodeToString(b[16:]) + "-" + flags}
}

type traceKey struct{}

// WithTrace returns ctx carrying t.
func WithTrace(ctx context.Context, t Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

// TraceFrom returns the Trace ctx carries; the zero Trace if none.
func TraceFrom(ctx context.Context) Trace {
	t, _ := ctx.Value(traceKey{}).(Trace)
	return t
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
