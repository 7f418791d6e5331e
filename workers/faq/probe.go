package faq

import (
	"context"
	"strings"

	"github.com/peakdesk/peakdesk/storage"
)

// Probe searches entries for question the way an Engine searches a shop's
// FAQ and returns up to n matches, most confident first. It builds an index
// of its own for the one search: shop administration uses it to try a
// question against the FAQ as stored right now, in a process that runs no
// Engine.
func Probe(ctx context.Context, entries []storage.FAQEntry, question string, n int) ([]Match, error) {
	question = strings.TrimSpace(question)
	if n <= 0 || question == "" || len(entries) == 0 {
		return nil, nil
	}
	si, err := buildIndex(entries, 0)
	if err != nil {
		return nil, err
	}
	defer si.close()
	return si.search(ctx, question, n)
}
