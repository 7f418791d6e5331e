package storage

import "time"

// Queued returns how many turns wait for a committer (tests).
func (c *TurnCommitter) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// SetSucceededCountEvery changes how often ActionCounts counts succeeded
// actions again (tests).
func (db *DB) SetSucceededCountEvery(d time.Duration) {
	db.succeeded.mu.Lock()
	defer db.succeeded.mu.Unlock()
	db.succeeded.every = d
}
