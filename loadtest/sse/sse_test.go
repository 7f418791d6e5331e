package sse_test

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/sse"
)

func readAll(t *testing.T, r io.Reader) ([]sse.Event, *sse.Reader, error) {
	t.Helper()
	rd := sse.NewReader(r)
	var out []sse.Event
	for {
		ev, err := rd.Next()
		if err != nil {
			return out, rd, err
		}
		out = append(out, ev)
	}
}

func TestReaderFollowsTheEventStreamRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		stream string
		want   []sse.Event
		lastID string
	}{
		{"peakdesk's stream",
			"retry: 2000\n\nevent: reply\nid: 7\ndata: {\"id\":\"r1\"}\n\n: keep-alive\n\nevent: partial\ndata: {\"text\":\"您好\"}\n\n",
			[]sse.Event{{Type: "reply", ID: "7", Data: `{"id":"r1"}`}, {Type: "partial", Data: `{"text":"您好"}`}}, "7"},
		{"data lines join with newlines", "data: a\ndata:b\ndata\n\n",
			[]sse.Event{{Data: "a\nb\n"}}, ""},
		{"only one leading space is removed", "data:  two\n\n", []sse.Event{{Data: " two"}}, ""},
		{"CRLF and CR end lines too", "\uFEFFevent: x\r\ndata: 1\r\rdata: 2\r\n\r\n",
			[]sse.Event{{Type: "x", Data: "1"}, {Data: "2"}}, ""},
		{"an event without data is not dispatched, but its id counts", "id: 5\nevent: reply\n\ndata: d\n\n",
			[]sse.Event{{Data: "d"}}, "5"},
		{"an id with NUL is ignored", "id: a\x00b\ndata: d\n\n", []sse.Event{{Data: "d"}}, ""},
		{"unknown fields and comments are skipped", "foo: bar\n:comment\ndata: d\n\n", []sse.Event{{Data: "d"}}, ""},
		{"an unfinished last event is discarded, and its id", "id: 1\ndata: done\n\nid: 2\ndata: half\n",
			[]sse.Event{{ID: "1", Data: "done"}}, "1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// One byte at a time: events split across reads still parse.
			got, rd, err := readAll(t, iotest.OneByteReader(strings.NewReader(tc.stream)))
			if !errors.Is(err, io.EOF) {
				t.Fatalf("end of stream: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("events %+v, want %+v", got, tc.want)
			}
			if rd.LastEventID() != tc.lastID {
				t.Errorf("last event id %q, want %q", rd.LastEventID(), tc.lastID)
			}
		})
	}
}

func TestReaderReportsRetryAndErrors(t *testing.T) {
	t.Parallel()
	_, rd, _ := readAll(t, strings.NewReader("retry: 2000\n\nretry: soon\n\n"))
	if rd.Retry() != 2*time.Second {
		t.Errorf("retry %v, want 2s", rd.Retry())
	}
	broken := errors.New("connection reset")
	got, _, err := readAll(t, io.MultiReader(strings.NewReader("data: a\n\n"), iotest.ErrReader(broken)))
	if len(got) != 1 || !errors.Is(err, broken) {
		t.Errorf("events %+v, err %v; want one event, then the read error", got, err)
	}
	_, _, err = readAll(t, strings.NewReader("data: "+strings.Repeat("x", sse.MaxLine+1)+"\n\n"))
	if err == nil || errors.Is(err, io.EOF) {
		t.Errorf("an overlong line: %v, want an error", err)
	}
}
