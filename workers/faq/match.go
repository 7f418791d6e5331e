package faq

import (
	"cmp"
	"slices"
)

// Match is an FAQ entry found for a question.
type Match struct {
	EntryID  int64
	Question string
	Answer   string
	Tags     []string
	// Score is the entry's BM25 score for the question; it ranks entries of
	// one search and means nothing across searches.
	Score float64
	// Confidence (0..1) is how much of the entry the question asks about:
	// the share of the entry's question-and-tags terms, weighted by their
	// inverse document frequency in the shop's FAQ, that the question
	// contains. Unlike Score it is comparable across questions and shops,
	// so a threshold can be set on it.
	Confidence float64
}

// sortMatches orders matches by confidence, then BM25 score.
func sortMatches(ms []Match) {
	slices.SortStableFunc(ms, func(a, b Match) int {
		if c := cmp.Compare(b.Confidence, a.Confidence); c != 0 {
			return c
		}
		return cmp.Compare(b.Score, a.Score)
	})
}

// confidence of an entry whose question and tags have the terms e, for a
// question with the terms q.
//
// Several measures were tried on testdata/questions_zh.json against the
// demo FAQ (coverage of the question, Dice, their geometric and harmonic
// means, with and without credit for answer terms): the entry-side coverage
// separated paraphrases from off-topic questions best. Coverage of the question would punish customers
// for saying more than the FAQ does ("收到的衣服有破损，质量太差了怎么处理").
func (si *shopIndex) confidence(q, e map[string]bool) float64 {
	var matched, total float64
	for t := range e {
		w := si.idf(t)
		total += w
		if q[t] {
			matched += w
		}
	}
	if total == 0 {
		return 0
	}
	return matched / total
}
