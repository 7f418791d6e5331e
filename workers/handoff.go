package workers

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// Asking for a human. A customer who asks for a person is handed over at
// once, whatever the priority and without an LLM call: the worker decides
// it before the Answerer (an opening p2 question is offered no tools, so
// the LLM could not hand over, and a model that is down could not either).
// The words are the built-in ones and the shop's own handoff_keywords.

// builtinHandoffWords are the words every shop's customers may ask for a
// human with.
var builtinHandoffWords = []string{"人工", "转人工", "human", "agent"}

// notHandoff are phrases that contain a handoff word without asking for a
// person: 人工智能 is artificial intelligence.
var notHandoff = []string{"人工智能"}

// asksForHuman reports whether text asks for a human with one of words:
// case-insensitively, format characters (zero-width spaces) ignored; a word
// of Latin letters as a word of its own (agent, agents — not agency), any
// other anywhere (人工).
func asksForHuman(text string, words []string) bool {
	lower := strings.ToLower(pii.StripFormat(text))
	for _, not := range notHandoff {
		lower = strings.ReplaceAll(lower, not, " ")
	}
	for _, w := range words {
		if w = strings.ToLower(strings.TrimSpace(w)); w != "" && containsWord(lower, w) {
			return true
		}
	}
	return false
}

// containsWord reports whether s has w: as a word of its own (an English
// plural s allowed) when w starts and ends with Latin letters or digits,
// anywhere otherwise.
func containsWord(s, w string) bool {
	first, _ := utf8.DecodeRuneInString(w)
	last, _ := utf8.DecodeLastRuneInString(w)
	if !isLatin(first) || !isLatin(last) {
		return strings.Contains(s, w)
	}
	for i := 0; ; {
		j := strings.Index(s[i:], w)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(w)
		before, _ := utf8.DecodeLastRuneInString(s[:start])
		after, size := utf8.DecodeRuneInString(s[end:])
		if after == 's' {
			after, _ = utf8.DecodeRuneInString(s[end+size:])
		}
		if !isLatin(before) && !isLatin(after) {
			return true
		}
		i = start + 1
	}
}

func isLatin(r rune) bool {
	return r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r))
}

// handoffWords keeps each shop's handoff words for a short while: a shop's
// change reaches the workers within wordsTTL without a query per message.
type handoffWords struct {
	db  *storage.DB
	log *slog.Logger

	mu     sync.Mutex
	byShop map[string]shopWords
}

type shopWords struct {
	words []string
	at    time.Time
}

// wordsTTL is how long a shop's handoff words are kept.
const wordsTTL = 2 * time.Second

// of returns the words the customers of shop may ask for a human with. If
// the shop's own cannot be read, the built-in ones (and the shop's last
// known) still count.
func (h *handoffWords) of(ctx context.Context, shop string) []string {
	h.mu.Lock()
	cached, ok := h.byShop[shop]
	h.mu.Unlock()
	if ok && time.Since(cached.at) < wordsTTL {
		return cached.words
	}
	words := builtinHandoffWords
	s, err := h.db.ShopTakeoverSettings(ctx, shop)
	switch {
	case err != nil && ok:
		h.log.Warn("reading the shop's handoff keywords failed; using the last known", "shop", shop, "err", err)
		return cached.words
	case err != nil:
		h.log.Warn("reading the shop's handoff keywords failed; using the built-in ones", "shop", shop, "err", err)
		return words
	case len(s.Keywords) > 0:
		words = append(append([]string{}, builtinHandoffWords...), s.Keywords...)
	}
	h.mu.Lock()
	if h.byShop == nil {
		h.byShop = map[string]shopWords{}
	}
	h.byShop[shop] = shopWords{words: words, at: time.Now()}
	h.mu.Unlock()
	return words
}
