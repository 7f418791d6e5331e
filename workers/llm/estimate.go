package llm

import (
	"unicode"
	"unicode/utf8"
)

// EstimatePromptTokens sizes the prompt of a call before it is made, for
// reserving its worst-case cost. Tokenizers differ by provider, so the
// estimate leans high: a CJK character counts 1.5 tokens, any other text a
// token per 3 bytes (English averages about 4), each message 4 tokens of
// framing, each tool its name, description and schema plus 8. What a call
// really cost is settled from the provider's usage afterwards.
func EstimatePromptTokens(turns []Turn, tools []Tool) int {
	n := 3 // the reply's priming
	for _, t := range turns {
		n += 4 + textTokens(t.Text) + textTokens(t.ToolCallID)
		for _, tc := range t.ToolCalls {
			n += 3 + textTokens(tc.ID) + textTokens(tc.Name) + textTokens(string(tc.Args))
		}
	}
	for _, t := range tools {
		n += 8 + textTokens(t.Name) + textTokens(t.Description) + textTokens(string(t.Parameters))
	}
	return n
}

// textTokens is the estimate of one text: 1.5 per CJK character, 1 per 3
// bytes of anything else, rounded up.
func textTokens(s string) int {
	cjk, other := 0, 0
	for _, r := range s {
		if unicode.In(r, unicode.Han, unicode.Hiragana, unicode.Katakana, unicode.Hangul) {
			cjk++
		} else {
			other += utf8.RuneLen(r)
		}
	}
	return (3*cjk+1)/2 + (other+2)/3
}
