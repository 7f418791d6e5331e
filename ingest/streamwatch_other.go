//go:build !linux

package ingest

import (
	"net"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// connWatcher notices the clients of taken-over (hijacked) event streams
// going away. Where there is no epoll it parks a reader goroutine per
// connection (watchByReader). Its zero value is ready to use.
type connWatcher struct {
	// fallbacks is not counted here: readers are the only way.
	fallbacks prometheus.Counter
	n         atomic.Int64
}

func (w *connWatcher) watch(group *goGroup, conn net.Conn, gone func()) (uint64, error) {
	if !watchByReader(group, conn, gone, &w.n) {
		return 0, errWatchStopping
	}
	return 0, nil
}

// unwatch does nothing: closing the connection ends the reader.
func (w *connWatcher) unwatch(net.Conn, uint64) {}

func (w *connWatcher) watching() int { return int(w.n.Load()) }
