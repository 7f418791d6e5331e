package peakdesk

import (
	"context"
	"math/rand/v2"
	"time"
)

// LinearBackOff is peakdesk's one retry schedule (docs/architecture.md): the n-th
// wait is Step·n, spread uniformly by ±Jitter (a fraction of the wait) so
// that processes that failed together do not retry together, and capped at
// Max. It implements github.com/cenkalti/backoff/v4's BackOff; it never
// returns backoff.Stop — callers count attempts against their own budget.
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

// NextBackOff returns the next wait.
func (b *LinearBackOff) NextBackOff() time.Duration {
	b.n++
	return b.Wait(b.n)
}

// Wait returns the wait after the n-th failure (n ≥ 1), as the n-th call of
// NextBackOff would, without moving the schedule.
func (b *LinearBackOff) Wait(n int) time.Duration {
	d := time.Duration(max(n, 1)) * b.Step
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

// Sleep waits d or until ctx is done, whichever comes first, and returns
// ctx.Err() if ctx ended the wait.
func Sleep(ctx context.Context, d time.Duration) error {
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
