package faq

import (
	"bytes"
	_ "embed"

	"github.com/peakdesk/peakdesk/storage"
)

//go:embed demo_faq.json
var demoFAQ []byte

// DemoEntries returns the FAQ `peakdesk dev` seeds the demo shop with: 25
// Chinese and 2 English entries of a fashion shop during Double 11. The FAQ
// hit-rate test measures the engine on them.
func DemoEntries() []storage.FAQEntry {
	entries, err := Parse("demo_faq.json", bytes.NewReader(demoFAQ))
	if err != nil {
		panic("faq: embedded demo FAQ: " + err.Error())
	}
	return entries
}
