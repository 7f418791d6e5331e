package workers

// picker shares slots between classes by weight (stride scheduling): each
// class has a pass that advances by 1/weight per slot it gets, and the
// eligible class with the smallest pass goes next. A class that turns out to
// have nothing queued gives back what it did not use and forfeits credit, so
// a class that was idle does not burst ahead when work arrives.
type picker struct {
	stride []float64
	pass   []float64
}

// newPicker returns a picker for classes with the given weights (each ≥ 1).
func newPicker(weights ...int) *picker {
	p := &picker{stride: make([]float64, len(weights)), pass: make([]float64, len(weights))}
	for i, w := range weights {
		p.stride[i] = 1 / float64(max(w, 1))
	}
	return p
}

// plan picks n slots among the eligible classes and returns how many each
// got.
func (p *picker) plan(n int, eligible []bool) []int {
	counts := make([]int, len(p.pass))
	for range n {
		i := p.pick(eligible)
		if i < 0 {
			break
		}
		counts[i]++
	}
	return counts
}

// pick returns the eligible class with the smallest pass (the first on a
// tie) and charges it one slot; -1 if none is eligible.
func (p *picker) pick(eligible []bool) int {
	best := -1
	for i := range p.pass {
		if eligible[i] && (best < 0 || p.pass[i] < p.pass[best]) {
			best = i
		}
	}
	if best >= 0 {
		p.pass[best] += p.stride[best]
	}
	return best
}

// unused gives back n slots class i was charged for but could not fill, and,
// since it ran dry, lets it keep no more credit than the busiest other class.
func (p *picker) unused(i, n int) {
	p.pass[i] -= float64(n) * p.stride[i]
	for j := range p.pass {
		if j != i && p.pass[j] > p.pass[i] {
			p.pass[i] = p.pass[j]
		}
	}
}
