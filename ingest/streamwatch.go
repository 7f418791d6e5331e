package ingest

import (
	"errors"
	"net"
	"sync/atomic"
)

// errWatchStopping is what a connWatcher's watch returns when the edge is
// stopping: the stream is to be closed, not watched.
var errWatchStopping = errors.New("the edge is stopping")

// watchByReader notices the client of conn leaving the plain way: a
// goroutine (in group) parked in a read — a client sends nothing after its
// request, so the read returns when the connection ends, or when the edge
// closes it. n counts the readers running. It reports false when group
// refuses the goroutine (the edge is stopping).
func watchByReader(group *goGroup, conn net.Conn, gone func(), n *atomic.Int64) bool {
	n.Add(1)
	started := group.Go(func() {
		defer n.Add(-1)
		var b [64]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				gone()
				return
			}
		}
	})
	if !started {
		n.Add(-1)
	}
	return started
}
