package outbox

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Linear is a backoff.BackOff that grows linearly: its n-th wait is Step·n
// plus a random jitter of up to Jitter·Step·n, and never more than Max
// (0 = no cap). The relay schedules the retry after a run's n-th failed
// attempt with a Linear advanced to n.
type Linear struct {
	Step time.Duration
	// Jitter is the largest extra wait as a fraction of Step·n (0..1).
	Jitter float64
	Max    time.Duration
	// Rand returns a number in [0, 1); nil means math/rand/v2.
	Rand func() float64

	n int
}

var _ backoff.BackOff = (*Linear)(nil)

// NextBackOff returns the next wait; it never returns backoff.Stop (the
// relay counts attempts itself, against the action's max attempts).
func (b *Linear) NextBackOff() time.Duration {
	b.n++
	d := b.Step * time.Duration(b.n)
	if b.Jitter > 0 {
		r := b.Rand
		if r == nil {
			r = rand.Float64
		}
		d += time.Duration(float64(d) * b.Jitter * r())
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	return d
}

// Reset starts the schedule again at Step.
func (b *Linear) Reset() { b.n = 0 }

// after returns the wait that follows the n-th failed attempt.
func (b Linear) after(n int) time.Duration {
	b.n = max(n, 1) - 1
	return b.NextBackOff()
}
