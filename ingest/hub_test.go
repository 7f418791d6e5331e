package ingest

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// beatCounter is a stream transport that counts the keep-alives written to
// it.
type beatCounter struct{ beats atomic.Int64 }

func (c *beatCounter) write(evs []hubEvent, beat bool) error {
	if len(evs) == 0 && beat {
		c.beats.Add(1)
	}
	return nil
}

func (c *beatCounter) close(closeReason, bool) {}

// One heartbeat round reaches every stream listed throughout it, once or
// more (never none), while other streams leave the hub during the walk —
// and it walks in chunks, without holding the hub's lock for the whole of
// it.
func TestHeartbeatRoundReachesEveryStream(t *testing.T) {
	t.Parallel()
	m, err := newPushMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := newReplyHub(time.Hour, m)
	const n = heartbeatSlices * beatChunk * 5 / 2 // two and a half chunks in every slice
	streams := make([]*pushStream, n)
	outs := make([]*beatCounter, n)
	for i := range n {
		s := newPushStream(h, "shop1", "u"+strconv.Itoa(i), "", 0, 1<<20)
		outs[i] = &beatCounter{}
		s.out = outs[i]
		if _, err := h.register(s); err != nil {
			t.Fatal(err)
		}
		s.finishReplay(0)
		streams[i] = s
	}
	// A third of the streams of a slice leave after the first chunk of its
	// walk: each removal moves the list's last stream into the gap.
	leaves := func(i int) bool { return i%3 == 1 }
	left := 0
	gone := make([]bool, n)
	h.afterChunk = func(slice uint64) {
		for i := 1; i < n; i += 3 {
			if streams[i].id%heartbeatSlices == slice && !gone[i] {
				gone[i] = true
				streams[i].close(closeClient)
				left++
			}
		}
	}
	chunk := make([]*pushStream, 0, beatChunk)
	for slice := range uint64(heartbeatSlices) {
		h.beatSlice(slice, chunk)
	}
	h.goroutines.Wait()
	for i := range n {
		if b := outs[i].beats.Load(); b < 1 && !leaves(i) {
			t.Fatalf("stream %d (slice %d) got no keep-alive in a round", i, streams[i].id%heartbeatSlices)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	listed := 0
	for slice, list := range h.beatLists {
		for j, s := range list {
			if s.beatAt != j || s.id%heartbeatSlices != uint64(slice) {
				t.Fatalf("stream %d listed at %d of slice %d, its beatAt %d", s.id, j, slice, s.beatAt)
			}
			listed++
		}
	}
	if listed != n-left || h.streams != n-left || left < n/4 {
		t.Fatalf("%d streams in the heartbeat lists, %d in the hub, want %d (%d of %d left)", listed, h.streams, n-left, left, n)
	}
}
