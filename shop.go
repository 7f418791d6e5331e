package peakdesk

// ValidShopID reports whether s can name a shop: it becomes a NATS subject
// token, so only [A-Za-z0-9_-], 1..64 bytes.
func ValidShopID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
