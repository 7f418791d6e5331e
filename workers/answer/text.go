package answer

import "github.com/peakdesk/peakdesk/workers/texts"

// handoffText is the reply that hands the conversation to a human, in the
// customer's language, or the shop's (shopLang) when the question does not
// tell.
func handoffText(question string, shopLang texts.Lang) string {
	return texts.Text(texts.Detect(question, shopLang), texts.HandoffUnavailable, nil)
}
