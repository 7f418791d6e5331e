package llm

import (
	"context"
	"time"

	"github.com/peakdesk/peakdesk"
)

// Clock is the time seam of the retry loop: the system clock in production,
// a recording clock in tests so that waits are asserted, not slept.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx is done, whichever is first.
	Sleep(ctx context.Context, d time.Duration) error
}

// SystemClock is the real Clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Sleep waits d or until ctx is done (peakdesk.Sleep).
func (SystemClock) Sleep(ctx context.Context, d time.Duration) error { return peakdesk.Sleep(ctx, d) }
