package peakdesk

import "strings"

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

// NormalizeOrigin returns web origin s the way a browser sends it in an
// Origin header — lowercase scheme://host[:port], the scheme's default
// port left out — or an invalid_argument error for anything that is not an
// http(s) origin (a path, a query, credentials, "null", a wildcard).
func NormalizeOrigin(s string) (string, error) {
	bad := FieldError("origin", "%q is not a web origin like https://shop.example.com", s)
	scheme, rest, ok := strings.Cut(strings.ToLower(strings.TrimSpace(s)), "://")
	rest = strings.TrimSuffix(rest, "/")
	if !ok || (scheme != "http" && scheme != "https") || rest == "" || strings.ContainsAny(rest, "/?#@* \t") {
		return "", bad
	}
	host, port, hasPort := strings.Cut(rest, ":")
	if strings.HasPrefix(rest, "[") { // an IPv6 literal
		end := strings.Index(rest, "]")
		if end < 0 {
			return "", bad
		}
		host, port = rest[:end+1], strings.TrimPrefix(rest[end+1:], ":")
		hasPort = port != ""
	}
	if host == "" || (hasPort && (port == "" || strings.Trim(port, "0123456789") != "" || len(port) > 5)) {
		return "", bad
	}
	if hasPort && (scheme == "http" && port == "80" || scheme == "https" && port == "443") {
		hasPort = false
	}
	if hasPort {
		return scheme + "://" + host + ":" + port, nil
	}
	return scheme + "://" + host, nil
}
