// Package pii finds and masks personal data in chat text — phone numbers,
// Chinese ID-card numbers, bank-card numbers and e-mail addresses — so that
// none of it reaches the LLM provider or a reply, and counts what it masked
// for the audit record.
//
// Detection is deliberately strict where a false positive would hurt the
// answer: an ID-card number must carry a valid birth date and checksum (the
// old 15-digit cards, which have no checksum, a valid province code and birth
// date), a bank-card number must pass the Luhn check and start like a card,
// and a long number right after an order word ("订单", "order #") is left
// alone so that order lookups keep working.
//
// Invisible format characters (Unicode category Cf: zero-width spaces and
// joiners, the soft hyphen, bidi controls, the BOM) do not hide a number:
// detection reads the text without them, and a masked value loses the ones
// inside it. Those outside personal data are left where they are, so emoji
// sequences joined by U+200D survive masking; StripFormat removes them all.
package pii

import (
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Kinds of personal data, used as keys of the counts.
const (
	Phone    = "phone"
	IDCard   = "id_card"
	BankCard = "bank_card"
	Email    = "email"
)

// Kinds lists every kind, in the order they are detected: where two
// candidates overlap the earlier kind wins (an e-mail address made of a phone
// number is an e-mail address; an ID-card number is not also a bank card).
var Kinds = []string{Email, IDCard, BankCard, Phone}

// Found is one piece of personal data in a text.
type Found struct {
	Kind string
	// Start and End are byte offsets into the text.
	Start, End int
	// Value is the text as written.
	Value string
}

var (
	emailRe = regexp.MustCompile(`[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}`)
	// An ID-card number is the 18-character resident identity card number
	// or the 15-digit first-generation one.
	idRe = regexp.MustCompile(`\d{17}[\dXx]|\d{15}`)
	// A card number is written in one run or in groups of four.
	cardRe = regexp.MustCompile(`\d{4}(?:[ \-]\d{4}){2,3}(?:[ \-]\d{1,4})?|\d{13,19}`)
	// Chinese mobile numbers (optionally +86), international numbers that
	// start with +, and Chinese landlines with an area code.
	phoneRe = regexp.MustCompile(`(?:\+?86[ \-]?)?1[3-9]\d(?:[ \-]?\d{4}){2}` +
		`|\+[1-9]\d{0,2}[ \-]?(?:\(\d{1,4}\)[ \-]?)?\d{1,4}(?:[ \-]?\d{2,4}){1,4}` +
		`|\(?0\d{2,3}\)?[ \-]\d{7,8}`)
)

// orderWords before a long number mark it as an order or tracking number,
// which must stay readable for the order lookup.
var orderWords = []string{"订单", "单号", "运单", "快递", "物流", "order", "tracking", "#"}

// StripFormat returns s without its format characters (Unicode category
// Cf): zero-width spaces and joiners (U+200B..U+200D, U+2060), the marks
// and embeddings of bidirectional text (U+200E, U+200F, U+202A..U+202E,
// U+2066..U+2069), the soft hyphen (U+00AD), the byte order mark (U+FEFF),
// tag characters and the rest. Text is classified (keywords, priorities)
// after StripFormat, so that "退\u200b款" is still "退款".
func StripFormat(s string) string {
	if !strings.ContainsFunc(s, isFormat) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isFormat(r) {
			return -1
		}
		return r
	}, s)
}

// isFormat reports whether r is a format character (category Cf).
func isFormat(r rune) bool {
	return r >= 0xAD && unicode.Is(unicode.Cf, r)
}

// Find returns the personal data in text, in order of position. Full-width
// digits, letters and signs (typed with a Chinese input method) count as
// their ASCII forms, and format characters (see StripFormat) do not count at
// all: "138\u200b1234\u200b5678" is a phone number. A Found's span and Value
// include the format characters inside it.
func Find(text string) []Found {
	folded, orig := fold(text)
	var found []Found
	overlaps := func(start, end int) bool {
		for _, f := range found {
			if start < f.End && f.Start < end {
				return true
			}
		}
		return false
	}
	for _, kind := range Kinds {
		for _, loc := range patternOf(kind).FindAllStringIndex(folded, -1) {
			start, end := loc[0], loc[1]
			if overlaps(start, end) || !standsAlone(folded, start, end) {
				continue
			}
			if !valid(kind, folded, start, folded[start:end]) {
				continue
			}
			found = append(found, Found{Kind: kind, Start: start, End: end, Value: folded[start:end]})
		}
	}
	slices.SortFunc(found, func(a, b Found) int { return a.Start - b.Start })
	if orig != nil {
		for i := range found {
			// The span ends after the last rune matched, so that format
			// characters right after a value stay outside it.
			last := orig[found[i].End-1]
			_, size := utf8.DecodeRuneInString(text[last:])
			found[i].Start, found[i].End = orig[found[i].Start], last+size
			found[i].Value = text[found[i].Start:found[i].End]
		}
	}
	return found
}

// fold maps full-width ASCII letters, digits and the signs of phone numbers
// and e-mail addresses to ASCII and drops format characters. orig[i] is the
// offset in text of byte i of the folded string (and orig[len] = len(text));
// nil when nothing changed.
func fold(text string) (string, []int) {
	if !strings.ContainsFunc(text, func(r rune) bool { return fullWidth(r) || isFormat(r) }) {
		return text, nil
	}
	var b strings.Builder
	orig := make([]int, 0, len(text)+1)
	for i, r := range text {
		if isFormat(r) {
			continue
		}
		if fullWidth(r) {
			r -= 0xFEE0
		}
		n := b.Len()
		b.WriteRune(r)
		for range b.Len() - n {
			orig = append(orig, i)
		}
	}
	return b.String(), append(orig, len(text))
}

func fullWidth(r rune) bool {
	switch {
	case r >= '０' && r <= '９', r >= 'Ａ' && r <= 'Ｚ', r >= 'ａ' && r <= 'ｚ':
		return true
	}
	return r == '＋' || r == '＠' || r == '－' || r == '．' || r == '（' || r == '）' || r == '＿' || r == '％'
}

// Mask replaces the personal data in text with masked forms and counts them
// by kind. The counts map is nil when nothing was masked.
func Mask(text string) (string, map[string]int) {
	return MaskExcept(text, nil)
}

// MaskExcept is Mask that leaves the values in keep as they are — the
// shop's own published contacts quoted from its FAQ, for example. A value
// is kept when it is in keep as written or in its normal form (ASCII, no
// format characters), which is what Values returns.
func MaskExcept(text string, keep map[string]bool) (string, map[string]int) {
	found := Find(text)
	if len(found) == 0 {
		return text, nil
	}
	var (
		b      strings.Builder
		counts map[string]int
		last   int
	)
	b.Grow(len(text))
	for _, f := range found {
		ascii, _ := fold(f.Value)
		if keep[f.Value] || keep[ascii] {
			continue
		}
		b.WriteString(text[last:f.Start])
		b.WriteString(masked(f.Kind, ascii))
		last = f.End
		if counts == nil {
			counts = map[string]int{}
		}
		counts[f.Kind]++
	}
	if counts == nil {
		return text, nil
	}
	b.WriteString(text[last:])
	return b.String(), counts
}

// Values returns the distinct values of the personal data in text in their
// normal form (ASCII, no format characters), for use as the keep set of
// MaskExcept.
func Values(text string) map[string]bool {
	found := Find(text)
	if len(found) == 0 {
		return nil
	}
	vals := make(map[string]bool, len(found))
	for _, f := range found {
		ascii, _ := fold(f.Value)
		vals[ascii] = true
	}
	return vals
}

func patternOf(kind string) *regexp.Regexp {
	switch kind {
	case Email:
		return emailRe
	case IDCard:
		return idRe
	case BankCard:
		return cardRe
	default:
		return phoneRe
	}
}

// standsAlone reports whether text[start:end] is not part of a longer run of
// digits (or, for an e-mail address, of a longer word).
func standsAlone(text string, start, end int) bool {
	before, _ := utf8.DecodeLastRuneInString(text[:start])
	after, _ := utf8.DecodeRuneInString(text[end:])
	if isDigit(before) || isDigit(after) {
		return false
	}
	// A trailing letter glued to the number ("…1234X1") means it is a code.
	return !isASCIILetter(after)
}

func valid(kind, text string, start int, value string) bool {
	switch kind {
	case IDCard:
		if len(value) == 15 {
			// Fifteen digits are as often an order or tracking number.
			return validOldIDCard(value) && !afterOrderWord(text, start)
		}
		return validIDCard(value)
	case BankCard:
		d := digits(value)
		return len(d) >= 13 && len(d) <= 19 && d[0] >= '2' && d[0] <= '6' && luhn(d) &&
			!afterOrderWord(text, start)
	case Phone:
		n := len(digits(value))
		return n >= 8 && n <= 15
	}
	return true
}

// afterOrderWord reports whether one of the order words ends within the 12
// runes before start.
func afterOrderWord(text string, start int) bool {
	from := start
	for i := 0; i < 12 && from > 0; i++ {
		_, size := utf8.DecodeLastRuneInString(text[:from])
		from -= size
	}
	window := strings.ToLower(text[from:start])
	for _, w := range orderWords {
		if strings.Contains(window, w) {
			return true
		}
	}
	return false
}

// validIDCard checks an 18-character resident identity card number: a
// plausible birth date and the ISO 7064 MOD 11-2 check character.
func validIDCard(v string) bool {
	if len(v) != 18 {
		return false
	}
	year := atoi(v[6:10])
	month := atoi(v[10:12])
	day := atoi(v[12:14])
	if year < 1900 || year > 2099 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) {
		return false
	}
	weights := [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
	sum := 0
	for i, w := range weights {
		sum += int(v[i]-'0') * w
	}
	check := "10X98765432"[sum%11]
	last := v[17]
	if last == 'x' {
		last = 'X'
	}
	return last == check
}

// validOldIDCard checks a 15-digit first-generation identity card number
// (issued until 2004, no check digit): a province code (the first two of
// the six area digits), then a plausible birth date YYMMDD in the 1900s.
// Random 15-digit runs pass about once in a hundred.
func validOldIDCard(v string) bool {
	if len(v) != 15 || !provinces[v[:2]] {
		return false
	}
	year := 1900 + atoi(v[6:8])
	month := atoi(v[8:10])
	day := atoi(v[10:12])
	return month >= 1 && month <= 12 && day >= 1 && day <= daysIn(year, month)
}

// provinces are the province-level codes that open a Chinese identity card
// number (GB/T 2260; 71 Taiwan, 81 Hong Kong, 82 Macau).
var provinces = map[string]bool{
	"11": true, "12": true, "13": true, "14": true, "15": true,
	"21": true, "22": true, "23": true,
	"31": true, "32": true, "33": true, "34": true, "35": true, "36": true, "37": true,
	"41": true, "42": true, "43": true, "44": true, "45": true, "46": true,
	"50": true, "51": true, "52": true, "53": true, "54": true,
	"61": true, "62": true, "63": true, "64": true, "65": true,
	"71": true, "81": true, "82": true,
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// luhn reports whether the digit string d passes the Luhn check.
func luhn(d string) bool {
	sum := 0
	double := false
	for i := len(d) - 1; i >= 0; i-- {
		n := int(d[i] - '0')
		if double {
			n *= 2
			if n > 9 {
				n -= 9
			}
		}
		sum += n
		double = !double
	}
	return sum%10 == 0
}

// masked is the masked form of value: enough left to tell the customer which
// of their numbers is meant, nothing that identifies them.
func masked(kind, value string) string {
	switch kind {
	case Email:
		at := strings.LastIndexByte(value, '@')
		first, _ := utf8.DecodeRuneInString(value)
		return string(first) + "***" + value[at:]
	case Phone:
		d := digits(value)
		prefix := ""
		if strings.HasPrefix(value, "+") {
			prefix = "+"
		}
		if len(d) == 13 && strings.HasPrefix(d, "86") && d[2] == '1' {
			// A Chinese mobile with its country code: keep the mobile's head.
			d, prefix = d[2:], prefix+"86 "
		}
		if len(d) >= 11 {
			return prefix + d[:3] + strings.Repeat("*", len(d)-7) + d[len(d)-4:]
		}
		return prefix + strings.Repeat("*", len(d)-4) + d[len(d)-4:]
	default: // ID card, bank card: only the last four stay
		d := digits(value)
		if kind == IDCard {
			d = strings.ToUpper(value)
		}
		return strings.Repeat("*", len(d)-4) + d[len(d)-4:]
	}
}

func digits(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

func isDigit(r rune) bool { return r >= '0' && r <= '9' }

func isASCIILetter(r rune) bool { return r < unicode.MaxASCII && unicode.IsLetter(r) }
