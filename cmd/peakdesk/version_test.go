package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// peakdesk version prints a version, a commit and the Go version; the
// build_info gauge carries the same.
func TestVersionAndBuildInfo(t *testing.T) {
	var out bytes.Buffer
	if err := runVersion(&out); err != nil {
		t.Fatal(err)
	}
	b := readBuildInfo()
	line := out.String()
	if !strings.HasPrefix(line, "peakdesk "+b.Version+" commit "+b.Commit) || !strings.Contains(line, b.Go) {
		t.Fatalf("version line %q, build info %+v", line, b)
	}
	want := `
# HELP peakdesk_build_info Always 1; the labels say which peakdesk build this process runs.
# TYPE peakdesk_build_info gauge
peakdesk_build_info{commit="abc123",go_version="go1.26.8",version="v0.1.0"} 1
`
	c := buildInfoCollector(buildInfo{Version: "v0.1.0", Commit: "abc123", Go: "go1.26.8"})
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
