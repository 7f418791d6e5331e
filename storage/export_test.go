package storage

// Queued returns how many turns wait for a committer (tests).
func (c *TurnCommitter) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}
