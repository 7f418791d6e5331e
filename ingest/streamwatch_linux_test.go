package ingest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk/loadtest/sse"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// rawStream is an SSE stream opened on a raw HTTP/1.1 connection: no
// client goroutine of net/http in the test process.
type rawStream struct {
	conn net.Conn
	rd   *sse.Reader
}

func (b *testBundle) openRaw(t *testing.T, token string) *rawStream {
	t.Helper()
	conn, err := net.Dial("tcp", b.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", token)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("open: %d", resp.StatusCode)
	}
	if !resp.Close || len(resp.TransferEncoding) != 0 {
		t.Fatalf("a taken-over stream answers Connection: close without chunking; got close %v, %v",
			resp.Close, resp.TransferEncoding)
	}
	return &rawStream{conn: conn, rd: sse.NewReader(br)}
}

// goroutinesIn counts the goroutines whose stack holds any of the
// functions.
func goroutinesIn(funcs ...string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range funcs {
			if strings.Contains(g, f) {
				n++
				break
			}
		}
	}
	return n
}

// perStream are the functions a goroutine kept per stream would be parked
// in: the handler, net/http's background read, a reader of our own.
var perStream = []string{"ingest.(*Edge).serveEvents", "net/http.(*connReader).backgroundRead",
	"ingest.(*Edge).acceptSSE", "ingest.(*connWatcher).watch"}

const watcherLoop = "ingest.(*connWatcher).loop"

// Taken-over SSE streams keep no goroutine each: one watcher notices their
// clients leaving; a reply still arrives; a client that goes away leaves
// no goroutine, hub entry or watch behind. (Not parallel: it counts the
// process's goroutines.)
func TestTakenOverStreamsKeepNoGoroutine(t *testing.T) {
	b := setup(t, queue.Topology{}, nil)
	const n = 20
	users := make([]string, n)
	streams := make([]*rawStream, n)
	for i := range n {
		users[i] = fmt.Sprintf("%sc%d", b.salt, i)
		streams[i] = b.openRaw(t, tok(t, "shop1", users[i]))
	}
	storagetest.WaitFor(t, "every stream watched", 10*time.Second, func() bool { return b.edge.push.watcher.watching() == n })
	storagetest.WaitFor(t, "no goroutine per stream", 10*time.Second, func() bool {
		return goroutinesIn(perStream...) == 0
	})
	if g := goroutinesIn(watcherLoop); g != 1 {
		t.Fatalf("%d watcher goroutines for %d streams, want 1", g, n)
	}

	// A reply arrives.
	conv := b.edge.ids.New("conv", "shop1", users[3], "")
	want := b.publishReply(t, "shop1", users[3], conv, "到了").ID
	if _, r := nextReply(t, streams[3].rd); r.ID != want {
		t.Fatalf("got reply %s, want %s", r.ID, want)
	}

	// Half the clients go away: their streams end, nothing of them stays.
	closedBefore := testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("client"))
	for i := range n / 2 {
		streams[i].conn.Close()
	}
	storagetest.WaitFor(t, "the gone clients' streams to end", 10*time.Second, func() bool {
		return b.edge.push.watcher.watching() == n/2 &&
			testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("client"))-closedBefore == n/2
	})
	for i := range n / 2 {
		if c := b.userStreams("shop1", users[i]); c != 0 {
			t.Errorf("customer %d still counts %d streams", i, c)
		}
	}
	b.edge.hub.mu.Lock()
	left := b.edge.hub.streams
	b.edge.hub.mu.Unlock()
	if left != n/2 {
		t.Errorf("the hub lists %d streams, want %d", left, n/2)
	}
	// The others still get their replies.
	conv = b.edge.ids.New("conv", "shop1", users[n-1], "")
	want = b.publishReply(t, "shop1", users[n-1], conv, "还在").ID
	if _, r := nextReply(t, streams[n-1].rd); r.ID != want {
		t.Fatalf("got reply %s, want %s", r.ID, want)
	}

	// The rest go: the watcher ends too.
	for i := n / 2; i < n; i++ {
		streams[i].conn.Close()
	}
	storagetest.WaitFor(t, "the watcher to end", 10*time.Second, func() bool {
		return b.edge.push.watcher.watching() == 0 && goroutinesIn(watcherLoop) == 0
	})
	// And starts again for the next stream.
	s := b.openRaw(t, tok(t, "shop1", users[0]))
	storagetest.WaitFor(t, "the new stream watched", 10*time.Second, func() bool { return b.edge.push.watcher.watching() == 1 })
	s.conn.Close()
	storagetest.WaitFor(t, "the new stream to end", 10*time.Second, func() bool {
		return b.edge.push.watcher.watching() == 0 && b.userStreams("shop1", users[0]) == 0
	})
}

// Shutdown closes taken-over streams, each with its reconnect hint, and
// nothing watches them after.
func TestShutdownClosesTakenOverStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	var streams []*rawStream
	for i := range 3 {
		streams = append(streams, b.openRaw(t, tok(t, "shop1", fmt.Sprintf("%sc%d", b.salt, i))))
	}
	storagetest.WaitFor(t, "every stream watched", 10*time.Second, func() bool { return b.edge.push.watcher.watching() == 3 })
	b.edge.CloseStreams() // waits for the streams' goroutines, the watcher's among them
	if w := b.edge.push.watcher.watching(); w != 0 {
		t.Fatalf("%d streams still watched after shutdown", w)
	}
	for i, s := range streams {
		_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.rd.Next(); err != io.EOF {
			t.Fatalf("stream %d after shutdown: %v, want its end", i, err)
		}
		if d := s.rd.Retry(); d < time.Second || d >= 10*time.Second {
			t.Fatalf("stream %d: retry %v, want a pause of 1..10 s", i, d)
		}
	}
	if got := testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("shutdown")); got != 3 {
		t.Fatalf("%v streams closed for shutdown, want 3", got)
	}
}

// A stream the epoll set cannot take is watched by a reader goroutine of
// its own, counted: it still gets its replies, still ends when its client
// goes away, and shutdown ends its reader.
func TestStreamWatchFallsBackToReader(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	w := &b.edge.push.watcher
	w.mu.Lock()
	w.ctl = func(epfd, op, fd int, ev *syscall.EpollEvent) error {
		if op == syscall.EPOLL_CTL_ADD {
			return syscall.ENOSPC // as when max_user_watches is reached
		}
		return syscall.EpollCtl(epfd, op, fd, ev)
	}
	w.mu.Unlock()
	fallbacks := func() float64 { return testutil.ToFloat64(b.edge.push.metrics.watchFallbacks) }

	const n = 3
	users := make([]string, n)
	streams := make([]*rawStream, n)
	for i := range n {
		users[i] = fmt.Sprintf("%sf%d", b.salt, i)
		streams[i] = b.openRaw(t, tok(t, "shop1", users[i]))
	}
	storagetest.WaitFor(t, "every stream watched by a reader", 10*time.Second, func() bool {
		return w.readers.Load() == n && w.watching() == n
	})
	if got := fallbacks(); got != n {
		t.Fatalf("fallbacks counted %v, want %d", got, n)
	}

	// A reply arrives on a stream watched the plain way.
	conv := b.edge.ids.New("conv", "shop1", users[1], "")
	want := b.publishReply(t, "shop1", users[1], conv, "到了").ID
	if _, r := nextReply(t, streams[1].rd); r.ID != want {
		t.Fatalf("got reply %s, want %s", r.ID, want)
	}

	// Its client goes away: the stream ends, its reader with it.
	closedBefore := testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("client"))
	streams[0].conn.Close()
	storagetest.WaitFor(t, "the gone client's stream to end", 10*time.Second, func() bool {
		return w.readers.Load() == n-1 && b.userStreams("shop1", users[0]) == 0 &&
			testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("client"))-closedBefore == 1
	})

	// Shutdown ends the others and their readers.
	b.edge.CloseStreams()
	if r := w.readers.Load(); r != 0 {
		t.Fatalf("%d readers left after shutdown", r)
	}
	for i := 1; i < n; i++ {
		_ = streams[i].conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			if _, err := streams[i].rd.Next(); err != nil {
				if err != io.EOF {
					t.Fatalf("stream %d after shutdown: %v, want its end", i, err)
				}
				break
			}
		}
	}
	if got := fallbacks(); got != n {
		t.Fatalf("fallbacks counted %v after shutdown, want still %d", got, n)
	}
}

// When waiting on the epoll set fails, every stream it watched gets a
// reader of its own: none is cut, each still ends when its client goes.
func TestStreamWatchFallsBackWhenEpollWaitFails(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	w := &b.edge.push.watcher
	fail := make(chan struct{})
	w.mu.Lock()
	w.wait = func(epfd int, events []syscall.EpollEvent, msec int) (int, error) {
		<-fail
		return 0, syscall.EBADF
	}
	w.mu.Unlock()

	const n = 2
	users := make([]string, n)
	streams := make([]*rawStream, n)
	for i := range n {
		users[i] = fmt.Sprintf("%sw%d", b.salt, i)
		streams[i] = b.openRaw(t, tok(t, "shop1", users[i]))
	}
	storagetest.WaitFor(t, "every stream watched by epoll", 10*time.Second, func() bool {
		return w.watching() == n && w.readers.Load() == 0
	})
	close(fail)
	storagetest.WaitFor(t, "every stream handed to a reader", 10*time.Second, func() bool {
		return w.readers.Load() == n && w.watching() == n &&
			testutil.ToFloat64(b.edge.push.metrics.watchFallbacks) == n
	})
	if c := testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("client")); c != 0 {
		t.Fatalf("%v streams cut", c)
	}
	conv := b.edge.ids.New("conv", "shop1", users[0], "")
	want := b.publishReply(t, "shop1", users[0], conv, "还在").ID
	if _, r := nextReply(t, streams[0].rd); r.ID != want {
		t.Fatalf("got reply %s, want %s", r.ID, want)
	}
	streams[1].conn.Close()
	storagetest.WaitFor(t, "the gone client's stream to end", 10*time.Second, func() bool {
		return w.readers.Load() == n-1 && b.userStreams("shop1", users[1]) == 0
	})
}
