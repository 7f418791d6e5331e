package answer

import "github.com/peakdesk/peakdesk/workers/texts"

// handoffText is the reply that hands the conversation to a human, in the
// customer's language.
func handoffText(question string) string {
	return texts.Text(texts.Detect(question, texts.DefaultLang), texts.HandoffUnavailable, nil)
}
