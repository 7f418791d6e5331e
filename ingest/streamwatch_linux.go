//go:build linux

package ingest

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// connWatcher notices the clients of taken-over (hijacked) event streams
// going away without a goroutine parked per stream: one goroutine waits on
// an epoll set holding every watched connection, for the peer's close
// (EPOLLRDHUP) or reset (EPOLLHUP, EPOLLERR). It runs only while it
// watches something. Its zero value is ready to use.
//
// The epoll set is the watcher's own, beside the Go runtime's: the
// connection stays an ordinary net.Conn for the stream's writes. Data a
// client sends is not waited for (clients have nothing to say); it stays
// unread until the connection closes.
//
// A connection the epoll set cannot take (the set cannot be created, the
// descriptor cannot be added), and every watched one if waiting on the set
// fails, is watched the plain way instead: a reader goroutine of its own
// (watchByReader), counted in fallbacks. The stream still ends when its
// client goes away; it only costs a goroutine more.
type connWatcher struct {
	// fallbacks counts connections watched by a reader goroutine instead
	// (nil: not counted). Set before the first watch.
	fallbacks prometheus.Counter

	mu      sync.Mutex
	running bool
	epfd    int
	wake    [2]int // a pipe in the epoll set: a byte makes the loop look again
	nextID  uint64
	gone    map[uint64]watchEntry // by watch id
	group   *goGroup              // where the loop runs, and fallback readers
	// readers counts the fallback readers running.
	readers atomic.Int64
	// ctl and wait are epoll_ctl and epoll_wait; tests replace them to
	// make the epoll watch fail.
	ctl  func(epfd, op, fd int, ev *syscall.EpollEvent) error
	wait func(epfd int, events []syscall.EpollEvent, msec int) (int, error)
}

// watchEntry is a watched connection and what to do when its peer leaves.
type watchEntry struct {
	conn net.Conn
	gone func()
}

// wakeID is the epoll data of the wake pipe; watch ids start at 1.
const wakeID = 0

// watch calls gone once, from the watcher's goroutine (started in group),
// when the peer of conn closes or resets it, unless unwatch comes first.
// It returns the id to unwatch with. When the epoll set cannot take conn,
// a reader goroutine in group watches it instead (id 0; closing conn ends
// it). It fails only when the edge is stopping (errWatchStopping).
func (w *connWatcher) watch(group *goGroup, conn net.Conn, gone func()) (uint64, error) {
	id, err := w.watchEpoll(group, conn, gone)
	if err == nil {
		return id, nil
	}
	if errors.Is(err, errWatchStopping) || !watchByReader(group, conn, gone, &w.readers) {
		return 0, errWatchStopping
	}
	if w.fallbacks != nil {
		w.fallbacks.Inc()
	}
	return 0, nil
}

// watchEpoll adds conn to the epoll set.
func (w *connWatcher) watchEpoll(group *goGroup, conn net.Conn, gone func()) (uint64, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, errors.New("connection without a file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.running {
		if err := w.startLocked(group); err != nil {
			return 0, err
		}
	}
	w.nextID++
	id := w.nextID
	ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	ctl := w.ctl
	if ctl == nil {
		ctl = syscall.EpollCtl
	}
	var addErr error
	if err := rc.Control(func(fd uintptr) {
		addErr = ctl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}); err != nil {
		addErr = err
	}
	if addErr != nil {
		w.idleLocked()
		return 0, addErr
	}
	if w.gone == nil {
		w.gone = map[uint64]watchEntry{}
	}
	w.gone[id] = watchEntry{conn: conn, gone: gone}
	return id, nil
}

// unwatch stops watching conn (watched as id), before it is closed. After
// it, gone is not called.
func (w *connWatcher) unwatch(conn net.Conn, id uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.gone[id]; !ok {
		return // fired already, or never watched
	}
	delete(w.gone, id)
	if rc, err := conn.(syscall.Conn).SyscallConn(); err == nil {
		// Closing the descriptor would drop it from the set too; removing
		// it first keeps the set exact whoever holds the connection.
		_ = rc.Control(func(fd uintptr) { _ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil) })
	}
	w.idleLocked()
}

// watching is how many connections are watched, by the epoll set or by
// fallback readers.
func (w *connWatcher) watching() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.gone) + int(w.readers.Load())
}

// startLocked creates the epoll set and starts the loop.
func (w *connWatcher) startLocked(group *goGroup) error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		_ = syscall.Close(epfd)
		return err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: wakeID}
	err = syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev)
	if err == nil && !group.Go(w.loop) {
		err = errWatchStopping
	}
	if err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(p[0])
		_ = syscall.Close(p[1])
		return err
	}
	w.epfd, w.wake, w.running, w.group = epfd, p, true, group
	return nil
}

// idleLocked wakes the loop when nothing is watched, so that it ends.
func (w *connWatcher) idleLocked() {
	if w.running && len(w.gone) == 0 {
		_, _ = syscall.Write(w.wake[1], []byte{0})
	}
}

// loop waits for watched peers to leave and calls their gone; it ends,
// closing the epoll set, once nothing is watched. It starts with w.mu held
// by startLocked's caller, so it reads epfd after taking it.
func (w *connWatcher) loop() {
	w.mu.Lock()
	epfd, wake, group, wait := w.epfd, w.wake, w.group, w.wait
	w.mu.Unlock()
	if wait == nil {
		wait = syscall.EpollWait
	}
	events := make([]syscall.EpollEvent, 128)
	var gone []func()
	for {
		n, err := wait(epfd, events, -1)
		if err != nil && err != syscall.EINTR {
			// Cannot happen with a valid set; stop using it rather than
			// spin: every watched connection gets a reader of its own (or
			// ends, when the edge is stopping).
			n = 0
			w.mu.Lock()
			for id, e := range w.gone {
				delete(w.gone, id)
				if !watchByReader(group, e.conn, e.gone, &w.readers) {
					gone = append(gone, e.gone)
				} else if w.fallbacks != nil {
					w.fallbacks.Inc()
				}
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == wakeID {
				var b [64]byte
				for {
					if k, _ := syscall.Read(wake[0], b[:]); k <= 0 {
						break
					}
				}
				continue
			}
			if e, ok := w.gone[id]; ok {
				delete(w.gone, id) // one-shot: the descriptor stays in the set, disarmed, until it closes
				gone = append(gone, e.gone)
			}
		}
		w.mu.Unlock()
		for i, f := range gone {
			f()
			gone[i] = nil
		}
		gone = gone[:0]
		w.mu.Lock()
		if len(w.gone) == 0 {
			w.running = false
			_ = syscall.Close(epfd)
			_ = syscall.Close(wake[0])
			_ = syscall.Close(wake[1])
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}
