package llm

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
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

// Sleep waits d or until ctx is done.
func (SystemClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// LinearBackOff is a backoff.BackOff whose n-th wait is Step·n, spread
// uniformly by ±Jitter (a fraction of the wait) so that processes that failed
// together do not retry together, and capped at Max.
type LinearBackOff struct {
	// Step is the first wait and the increment of each next one.
	Step time.Duration
	// Max caps a wait; 0 means no cap.
	Max time.Duration
	// Jitter is the spread as a fraction of the wait, 0..1.
	Jitter float64
	// Rand returns numbers in [0, 1); nil uses math/rand/v2.
	Rand func() float64

	n int
}

var _ backoff.BackOff = (*LinearBackOff)(nil)

// NextBackOff returns the next wait.
func (b *LinearBackOff) NextBackOff() time.Duration {
	b.n++
	d := time.Duration(b.n) * b.Step
	if b.Jitter > 0 {
		r := rand.Float64
		if b.Rand != nil {
			r = b.Rand
		}
		d += time.Duration((2*r() - 1) * min(b.Jitter, 1) * float64(d))
	}
	if b.Max > 0 {
		d = min(d, b.Max)
	}
	return max(d, 0)
}

// Reset starts the schedule again.
func (b *LinearBackOff) Reset() { b.n = 0 }
