package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every environment variable the program reads is documented, by name, in
// the configuration reference.
func TestEverySettingIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`"((?:PEAKDESK|NATS|DATABASE|REDIS)_[A-Z0-9_]+)"`)
	found := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllSubmatch(src, -1) {
			found++
			if v := string(m[1]); !strings.Contains(string(doc), "`"+v+"`") {
				t.Errorf("%s reads %s, which docs/configuration.md does not document", f, v)
			}
		}
	}
	if found < 40 {
		t.Fatalf("found %d settings: the scan is broken", found)
	}
}
