package peakdesk_test

import (
	"context"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/peakdesk/peakdesk"
)

var _ backoff.BackOff = (*peakdesk.LinearBackOff)(nil)

func TestLinearBackOff(t *testing.T) {
	t.Parallel()
	b := &peakdesk.LinearBackOff{Step: time.Second, Max: 3500 * time.Millisecond}
	var got []time.Duration
	for range 5 {
		got = append(got, b.NextBackOff())
	}
	want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3500 * time.Millisecond, 3500 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v, want %v", got, want)
		}
	}
	b.Reset()
	if d := b.NextBackOff(); d != time.Second {
		t.Fatalf("after Reset: %v", d)
	}
	// Jitter spreads a wait by at most ±Jitter of it.
	for _, r := range []float64{0, 0.5, 0.999} {
		j := &peakdesk.LinearBackOff{Step: 10 * time.Second, Jitter: 0.2, Rand: func() float64 { return r }}
		if d := j.Wait(2); d < 16*time.Second || d > 24*time.Second {
			t.Errorf("rand %v: wait %v outside 20 s ± 20 %%", r, d)
		}
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := peakdesk.Sleep(ctx, time.Hour); err != context.Canceled {
		t.Fatalf("Sleep on a done context: %v", err)
	}
	if err := peakdesk.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
