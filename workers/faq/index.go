package faq

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/analysis/analyzer/custom"
	"github.com/blevesearch/bleve/v2/analysis/lang/cjk"
	"github.com/blevesearch/bleve/v2/analysis/lang/en"
	"github.com/blevesearch/bleve/v2/analysis/token/lowercase"
	"github.com/blevesearch/bleve/v2/analysis/token/porter"
	stopfilter "github.com/blevesearch/bleve/v2/analysis/token/stop"
	"github.com/blevesearch/bleve/v2/analysis/tokenizer/unicode"
	"github.com/blevesearch/bleve/v2/analysis/tokenmap"
	"github.com/blevesearch/bleve/v2/index/scorch"
	"github.com/blevesearch/bleve/v2/mapping"
	"github.com/blevesearch/bleve/v2/search/query"
	index "github.com/blevesearch/bleve_index_api"

	"github.com/peakdesk/peakdesk/storage"
)

// Field boosts: the question says what an entry is about; tags are the
// shop's own synonyms; the answer's words help recall, weakly.
const (
	boostQuestion = 3.0
	boostTags     = 2.0
	boostAnswer   = 0.5
	candidates    = 5 // BM25 hits whose confidence is computed
)

// doc is what is indexed for an entry.
type doc struct {
	Question string `json:"question"`
	Tags     string `json:"tags"`
	Answer   string `json:"answer"`
}

// analyzerName is the analyzer of every field and query: the cjk analyzer's
// chain (unicode word breaks, full/half-width folding, lower case, CJK
// bigrams) plus English possessives, stop words and Porter stemming, and a
// stop list of Chinese function-word bigrams (什么, 怎么, 可以, ...) that
// say how a question is asked, not what it is about.
const analyzerName = "peakdesk_faq"

// stopWordsZH are the Chinese function words and filler bigrams left out of
// the index. Without them "退的钱什么时候到账" is closer to "赠品什么时候发？"
// than to "退款多久能到账？".
var stopWordsZH = []string{
	// single characters (the bigram filter keeps an isolated one)
	"的", "了", "吗", "呢", "吧", "啊", "呀", "么", "哦", "嘛", "我", "你", "您", "他", "她", "它",
	"是", "在", "有", "和", "就", "都", "也", "还", "要", "会", "能", "可", "请", "问", "把", "被",
	"给", "对", "从", "这", "那", "个", "一", "些", "不", "没", "很", "太", "怎", "什", "哪", "谁",
	"嗯", "哈", "亲", "啦",
	// bigrams of question words and filler
	"什么", "么时", "时候", "怎么", "么样", "么办", "么弄", "怎样", "如何", "可以", "以吗", "能不",
	"不能", "能够", "可不", "不可", "是不", "不是", "是否", "有没", "没有", "有什", "请问", "你们",
	"我们", "他们", "你好", "您好", "一下", "哪些", "哪里", "哪个", "多少", "多久", "为什", "么会",
	"么能", "么还", "还能", "还是", "就是", "这个", "那个", "一个", "的话", "我的", "你的", "我想",
	"我要", "想要", "吗？", "么呢", "是什", "有哪", "在哪", "里的",
}

// newMapping is the index mapping: question, tags and answer, all through
// analyzerName, scored with BM25.
func newMapping() (*mapping.IndexMappingImpl, error) {
	m := bleve.NewIndexMapping()
	m.ScoringModel = index.BM25Scoring
	stop := make([]any, len(stopWordsZH))
	for i, w := range stopWordsZH {
		stop[i] = w
	}
	if err := m.AddCustomTokenMap("peakdesk_stop_zh", map[string]any{
		"type": tokenmap.Name, "tokens": stop,
	}); err != nil {
		return nil, err
	}
	if err := m.AddCustomTokenFilter("peakdesk_stop_zh", map[string]any{
		"type": stopfilter.Name, "stop_token_map": "peakdesk_stop_zh",
	}); err != nil {
		return nil, err
	}
	if err := m.AddCustomAnalyzer(analyzerName, map[string]any{
		"type":      custom.Name,
		"tokenizer": unicode.Name,
		"token_filters": []any{cjk.WidthName, lowercase.Name, en.PossessiveName, cjk.BigramName,
			"peakdesk_stop_zh", en.StopName, porter.Name},
	}); err != nil {
		return nil, err
	}
	text := func() *mapping.FieldMapping {
		f := bleve.NewTextFieldMapping()
		f.Analyzer = analyzerName
		f.Store = false
		f.IncludeInAll = false
		f.IncludeTermVectors = false
		return f
	}
	dm := bleve.NewDocumentStaticMapping()
	dm.AddFieldMappingsAt("question", text())
	dm.AddFieldMappingsAt("tags", text())
	dm.AddFieldMappingsAt("answer", text())
	m.DefaultMapping = dm
	m.DefaultAnalyzer = analyzerName
	return m, nil
}

// shopIndex is the in-memory index of one shop's FAQ at one version.
type shopIndex struct {
	version  int64
	entries  map[string]storage.FAQEntry // by document id
	analyzer analysis.Analyzer
	// terms are each entry's question-and-tags terms; df counts the entries
	// whose question, tags or answer hold a term; n is the entry count.
	terms map[string]map[string]bool
	df    map[string]int
	n     int

	mu     sync.RWMutex // searches hold it shared; close holds it alone
	idx    bleve.Index
	closed bool
}

// buildIndex indexes entries. The index lives in memory (scorch without a
// path): BM25 needs scorch's field statistics, which the in-memory
// upsidedown index of bleve.NewMemOnly lacks.
func buildIndex(entries []storage.FAQEntry, version int64) (*shopIndex, error) {
	m, err := newMapping()
	if err != nil {
		return nil, fmt.Errorf("faq: mapping: %w", err)
	}
	idx, err := bleve.NewUsing("", m, scorch.Name, scorch.Name, nil)
	if err != nil {
		return nil, fmt.Errorf("faq: new index: %w", err)
	}
	si := &shopIndex{
		version:  version,
		entries:  make(map[string]storage.FAQEntry, len(entries)),
		analyzer: m.AnalyzerNamed(analyzerName),
		terms:    make(map[string]map[string]bool, len(entries)),
		df:       map[string]int{},
		n:        len(entries),
		idx:      idx,
	}
	b := idx.NewBatch()
	for _, e := range entries {
		id := strconv.FormatInt(e.ID, 10)
		d := doc{Question: e.Question, Tags: joinTags(e.Tags), Answer: e.Answer}
		if err := b.Index(id, d); err != nil {
			_ = idx.Close()
			return nil, fmt.Errorf("faq: index entry %d: %w", e.ID, err)
		}
		si.entries[id] = e
		qt := si.analyze(d.Question + " " + d.Tags)
		si.terms[id] = qt
		all := si.analyze(d.Answer)
		for t := range qt {
			all[t] = true
		}
		for t := range all {
			si.df[t]++
		}
	}
	if err := idx.Batch(b); err != nil {
		_ = idx.Close()
		return nil, fmt.Errorf("faq: index: %w", err)
	}
	return si, nil
}

func joinTags(tags []string) string {
	s := ""
	for i, t := range tags {
		if i > 0 {
			s += " ; "
		}
		s += t
	}
	return s
}

// analyze returns the distinct terms of text as the index sees them.
func (si *shopIndex) analyze(text string) map[string]bool {
	terms := map[string]bool{}
	for _, tok := range si.analyzer.Analyze([]byte(text)) {
		terms[string(tok.Term)] = true
	}
	return terms
}

// idf is BM25's inverse document frequency of a term within the shop's FAQ;
// a term no entry holds weighs most.
func (si *shopIndex) idf(term string) float64 {
	df := float64(si.df[term])
	return math.Log(1 + (float64(si.n)-df+0.5)/(df+0.5))
}

// search returns up to n entries for text, best first, with their BM25
// score and confidence.
func (si *shopIndex) search(ctx context.Context, text string, n int) ([]Match, error) {
	si.mu.RLock()
	defer si.mu.RUnlock()
	if si.closed || si.n == 0 {
		return nil, nil
	}
	field := func(name string, boost float64) query.Query {
		q := bleve.NewMatchQuery(text)
		q.SetField(name)
		q.Analyzer = analyzerName
		q.SetBoost(boost)
		return q
	}
	q := bleve.NewDisjunctionQuery(field("question", boostQuestion), field("tags", boostTags),
		field("answer", boostAnswer))
	req := bleve.NewSearchRequestOptions(q, max(n, candidates), 0, false)
	res, err := si.idx.SearchInContext(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("faq: search: %w", err)
	}
	query := si.analyze(text)
	out := make([]Match, 0, len(res.Hits))
	for _, h := range res.Hits {
		e, ok := si.entries[h.ID]
		if !ok {
			continue
		}
		out = append(out, Match{
			EntryID: e.ID, Question: e.Question, Answer: e.Answer, Tags: e.Tags,
			Score: h.Score, Confidence: si.confidence(query, si.terms[h.ID]),
		})
	}
	sortMatches(out)
	if len(out) > n {
		out = out[:n]
	}
	return out, nil
}

func (si *shopIndex) close() {
	si.mu.Lock()
	defer si.mu.Unlock()
	if !si.closed {
		si.closed = true
		_ = si.idx.Close()
	}
}
