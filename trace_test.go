package peakdesk_test

import (
	"context"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk"
)

func TestContinueTrace(t *testing.T) {
	t.Parallel()
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	got := peakdesk.ContinueTrace("00-" + id + "-00f067aa0ba902b7-01")
	if got.ID != id || !strings.HasPrefix(got.Parent, "00-"+id+"-") || strings.Contains(got.Parent, "00f067aa0ba902b7") ||
		!strings.HasSuffix(got.Parent, "-01") {
		t.Fatalf("continued: %+v; want the same trace id, a new span id", got)
	}
	for _, bad := range []string{"", "garbage", "ff-" + id + "-00f067aa0ba902b7-01", "00-" + strings.Repeat("0", 32) + "-00f067aa0ba902b7-01",
		"00-" + strings.ToUpper(id) + "-00f067aa0ba902b7-01"} {
		nt := peakdesk.ContinueTrace(bad)
		if nt.ID == id || len(nt.ID) != 32 || len(nt.Parent) != 55 {
			t.Errorf("%q: %+v; want a new trace", bad, nt)
		}
	}
	ctx := peakdesk.WithTrace(context.Background(), got)
	if peakdesk.TraceFrom(ctx) != got || peakdesk.TraceFrom(context.Background()) != (peakdesk.Trace{}) {
		t.Fatal("trace not carried by the context")
	}
}
