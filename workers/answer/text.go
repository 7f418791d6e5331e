package answer

import "unicode"

// handoffText is the reply that hands the conversation to a human, in the
// customer's language (Chinese when the question has Han characters).
func handoffText(question string) string {
	if hasHan(question) {
		return "抱歉，智能客服暂时无法回答您的问题，已为您转接人工客服，请稍候。"
	}
	return "Sorry, our assistant cannot answer right now. A human agent will get back to you shortly."
}

func hasHan(s string) bool {
	for _, r := range s {
		if unicode.Is(unicode.Han, r) {
			return true
		}
	}
	return false
}
