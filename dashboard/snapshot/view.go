package snapshot

import (
	"math"
	"strings"
)

// View is the snapshots of every live process, added up.
type View []Snapshot

// Processes returns how many processes published family name.
func (v View) Processes(name string) int {
	n := 0
	for _, s := range v {
		for i := range s.Series {
			if s.Series[i].Name == name {
				n++
				break
			}
		}
	}
	return n
}

// each calls fn for every series of family name whose labels match where
// (label=value pairs; a value starting with ! excludes it).
func (v View) each(name string, where []string, fn func(s *Series)) {
	for _, snap := range v {
		for i := range snap.Series {
			s := &snap.Series[i]
			if s.Name == name && matches(s, where) {
				fn(s)
			}
		}
	}
}

func matches(s *Series, where []string) bool {
	for _, w := range where {
		k, val, _ := strings.Cut(w, "=")
		if neg, ok := strings.CutPrefix(val, "!"); ok {
			if s.Labels[k] == neg {
				return false
			}
		} else if s.Labels[k] != val {
			return false
		}
	}
	return true
}

// Sum adds up family name's values (gauges) over every process, grouped by
// label by ("" = one total under key "").
func (v View) Sum(name, by string, where ...string) map[string]float64 {
	out := map[string]float64{}
	v.each(name, where, func(s *Series) { out[s.Labels[by]] += s.Value })
	return out
}

// Max is the largest value of family name per label by, over processes.
func (v View) Max(name, by string, where ...string) map[string]float64 {
	out := map[string]float64{}
	v.each(name, where, func(s *Series) {
		if cur, ok := out[s.Labels[by]]; !ok || s.Value > cur {
			out[s.Labels[by]] = s.Value
		}
	})
	return out
}

// Rate adds up family name's counter rates (per second) grouped by label
// by.
func (v View) Rate(name, by string, where ...string) map[string]float64 {
	out := map[string]float64{}
	v.each(name, where, func(s *Series) { out[s.Labels[by]] += s.Rate })
	return out
}

// Total is the sum of every value of m.
func Total(m map[string]float64) float64 {
	var t float64
	for _, x := range m {
		t += x
	}
	return t
}

// Quantile merges the window's observations of histogram name per label by
// and returns quantile q (0..1) of each, in the histogram's unit; groups
// without observations are left out.
func (v View) Quantile(name, by string, q float64, where ...string) map[string]float64 {
	type merged struct {
		bounds []float64
		counts []float64
		count  float64
	}
	groups := map[string]*merged{}
	v.each(name, where, func(s *Series) {
		g := groups[s.Labels[by]]
		if g == nil {
			g = &merged{bounds: s.Bounds, counts: make([]float64, len(s.Counts))}
			groups[s.Labels[by]] = g
		}
		if len(s.Counts) != len(g.counts) {
			return // another bucket layout: not comparable
		}
		for i, c := range s.Counts {
			g.counts[i] += c
		}
		g.count += s.Count
	})
	out := map[string]float64{}
	for k, g := range groups {
		if g.count > 0 {
			out[k] = bucketQuantile(q, g.bounds, g.counts, g.count)
		}
	}
	return out
}

// bucketQuantile interpolates quantile q linearly within its bucket, as
// Prometheus's histogram_quantile does; observations above the last bound
// answer the last bound.
func bucketQuantile(q float64, bounds, cumulative []float64, count float64) float64 {
	if count == 0 || len(bounds) == 0 {
		return math.NaN()
	}
	rank := q * count
	lower, below := 0.0, 0.0
	for i, upper := range bounds {
		if cumulative[i] >= rank {
			in := cumulative[i] - below
			if in <= 0 {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/in
		}
		lower, below = upper, cumulative[i]
	}
	return bounds[len(bounds)-1]
}
