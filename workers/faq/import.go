package faq

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk/storage"
)

// Limits of one entry, as in the faq_entries table.
const (
	MaxQuestionRunes = 1000
	MaxAnswerRunes   = 4000
)

// Parse reads FAQ entries from r, in the format named by name's extension
// (.csv or .json) or, for any other name, guessed from the first byte ('['
// is JSON).
//
// CSV: one entry per record, question,answer[,tags] with tags separated by
// '|' or ';'; a first record "question,answer[,tags]" is a header and
// skipped. JSON: an array of {"question", "answer", "tags"?}, tags an array
// of strings or one string separated like the CSV's.
func Parse(name string, r io.Reader) ([]storage.FAQEntry, error) {
	data, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("faq: read %s: %w", name, err)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a BOM from spreadsheet exports
	var entries []storage.FAQEntry
	switch ext := strings.ToLower(filepath.Ext(name)); {
	case ext == ".json", ext != ".csv" && bytes.HasPrefix(bytes.TrimSpace(data), []byte("[")):
		entries, err = parseJSON(data)
	default:
		entries, err = parseCSV(data)
	}
	if err != nil {
		return nil, fmt.Errorf("faq: %s: %w", name, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("faq: %s: no entries", name)
	}
	return entries, nil
}

func parseCSV(data []byte) ([]storage.FAQEntry, error) {
	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	var entries []storage.FAQEntry
	for n := 1; ; n++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return entries, nil
		}
		if err != nil {
			return nil, err
		}
		if n == 1 && len(rec) >= 2 && strings.EqualFold(strings.TrimSpace(rec[0]), "question") &&
			strings.EqualFold(strings.TrimSpace(rec[1]), "answer") {
			continue
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a blank line
		}
		if len(rec) < 2 || len(rec) > 3 {
			return nil, fmt.Errorf("record %d: want question,answer[,tags], got %d fields", n, len(rec))
		}
		e := storage.FAQEntry{Question: rec[0], Answer: rec[1]}
		if len(rec) == 3 {
			e.Tags = splitTags(rec[2])
		}
		if err := check(&e); err != nil {
			return nil, fmt.Errorf("record %d: %w", n, err)
		}
		entries = append(entries, e)
	}
}

func parseJSON(data []byte) ([]storage.FAQEntry, error) {
	var raw []struct {
		Question string          `json:"question"`
		Answer   string          `json:"answer"`
		Tags     json.RawMessage `json:"tags"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("want an array of {question, answer, tags?}: %w", err)
	}
	entries := make([]storage.FAQEntry, 0, len(raw))
	for i, r := range raw {
		e := storage.FAQEntry{Question: r.Question, Answer: r.Answer}
		if t := bytes.TrimSpace(r.Tags); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
			var list []string
			var one string
			switch {
			case json.Unmarshal(t, &list) == nil:
				for _, s := range list {
					e.Tags = append(e.Tags, splitTags(s)...)
				}
			case json.Unmarshal(t, &one) == nil:
				e.Tags = splitTags(one)
			default:
				return nil, fmt.Errorf("entry %d: tags must be a string or an array of strings", i+1)
			}
		}
		if err := check(&e); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

func splitTags(s string) []string {
	var tags []string
	for _, t := range strings.FieldsFunc(s, func(r rune) bool { return r == '|' || r == ';' || r == '；' }) {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

// check trims e and rejects what the table would.
func check(e *storage.FAQEntry) error {
	e.Question, e.Answer = strings.TrimSpace(e.Question), strings.TrimSpace(e.Answer)
	switch {
	case e.Question == "":
		return errors.New("question is empty")
	case e.Answer == "":
		return errors.New("answer is empty")
	case !utf8.ValidString(e.Question) || !utf8.ValidString(e.Answer):
		return errors.New("text is not valid UTF-8")
	case utf8.RuneCountInString(e.Question) > MaxQuestionRunes:
		return fmt.Errorf("question is longer than %d characters", MaxQuestionRunes)
	case utf8.RuneCountInString(e.Answer) > MaxAnswerRunes:
		return fmt.Errorf("answer is longer than %d characters", MaxAnswerRunes)
	}
	return nil
}
