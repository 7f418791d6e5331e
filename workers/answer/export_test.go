package answer

// LeaderKey returns the Redis key a burst of questions like req elects its
// leader under, and whether req would be coalesced at all.
func (a *Answerer) LeaderKey(req Request) (string, bool) {
	key, ok := a.coalesceKey(req, req.Question, nil)
	return a.leadKey(key), ok
}
