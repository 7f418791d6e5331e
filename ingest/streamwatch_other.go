//go:build !linux

package ingest

import (
	"errors"
	"net"
	"sync/atomic"
)

// connWatcher notices the clients of taken-over (hijacked) event streams
// going away. Where there is no epoll it parks a reader goroutine per
// connection: a client sends nothing after its request, so a read returns
// when the connection ends. Its zero value is ready to use.
type connWatcher struct {
	n atomic.Int64
}

func (w *connWatcher) watch(group *goGroup, conn net.Conn, gone func()) (uint64, error) {
	w.n.Add(1)
	started := group.Go(func() {
		defer w.n.Add(-1)
		var b [64]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				gone()
				return
			}
		}
	})
	if !started {
		w.n.Add(-1)
		return 0, errors.New("the edge is stopping")
	}
	return 0, nil
}

// unwatch does nothing: closing the connection ends the reader.
func (w *connWatcher) unwatch(net.Conn, uint64) {}

func (w *connWatcher) watching() int { return int(w.n.Load()) }
