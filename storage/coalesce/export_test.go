package coalesce

// Callers returns how many callers of Do wait for a run's result now.
func (g *Group) Callers() int { return int(g.callers.Load()) }
