// Package sse reads a text/event-stream the way a browser's EventSource
// does (the WHATWG "server-sent events" parsing rules): fields up to a blank
// line make an event, comments and unknown fields are skipped, an event
// without data is not dispatched, and the last event id is remembered for
// a reconnect's Last-Event-ID. The load generator follows conversations
// with it, and tests read peakdesk's event streams with it.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// MaxLine bounds one line of a stream: a longer one is an error, so a
// broken server cannot make a reader hold unbounded memory.
const MaxLine = 1 << 20

// Event is one dispatched server-sent event.
type Event struct {
	// Type is the event's "event" field; "" means the default type
	// ("message").
	Type string
	// ID is the event's own "id" field; "" when it carried none. The id to
	// resume from is Reader.LastEventID, which persists across events.
	ID string
	// Data is the event's data lines, joined by "\n".
	Data string
}

// Reader reads events from a stream. It is not safe for concurrent use.
type Reader struct {
	sc *bufio.Scanner
	// idBuf is the id fields' value so far; lastID takes it when an event
	// ends, so an id of an event cut off midway does not count.
	idBuf, lastID string
	retry         time.Duration
	begun         bool
}

// NewReader returns a Reader of the event stream r (a response body).
func NewReader(r io.Reader) *Reader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	sc.Split(scanLines)
	return &Reader{sc: sc}
}

// Next returns the next event. It blocks until one is complete; at the end
// of the stream it returns io.EOF (an unfinished last event is discarded,
// as the rules say), or the error that ended the read.
func (r *Reader) Next() (Event, error) {
	var ev Event
	var data strings.Builder
	hasData := false
	for r.sc.Scan() {
		line := r.sc.Text()
		if !r.begun {
			r.begun = true
			line = strings.TrimPrefix(line, "\uFEFF")
		}
		if line == "" {
			r.lastID = r.idBuf
			if !hasData {
				ev = Event{} // an event without data is not dispatched
				continue
			}
			ev.Data = data.String()
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			continue // a comment: keep-alives
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Type = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				ev.ID, r.idBuf = value, value
			}
		case "retry":
			if ms, err := strconv.ParseUint(value, 10, 32); err == nil {
				r.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
	if err := r.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Event{}, fmt.Errorf("sse: a line is longer than %d bytes", MaxLine)
		}
		return Event{}, err
	}
	return Event{}, io.EOF
}

// LastEventID is the last id the stream set in an event that ended (with or
// without data): what a reconnect sends as Last-Event-ID.
func (r *Reader) LastEventID() string { return r.lastID }

// Retry is the reconnection delay the stream asked for; 0 if it did not.
func (r *Reader) Retry() time.Duration { return r.retry }

// scanLines splits a stream into lines ended by "\r\n", "\n" or "\r".
func scanLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		// A "\r" may be the first half of "\r\n": wait for the next byte.
		if i+1 < len(data) {
			if data[i+1] == '\n' {
				return i + 2, data[:i], nil
			}
			return i + 1, data[:i], nil
		}
		if atEOF {
			return i + 1, data[:i], nil
		}
		return 0, nil, nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil // an unterminated last line
	}
	return 0, nil, nil
}
