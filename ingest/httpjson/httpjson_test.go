package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
)

func TestWriteErrorMapsCodesAndHidesInternals(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{peakdesk.Errorf(peakdesk.EInvalid, "bad"), 400, "invalid_argument", ""},
		{peakdesk.Errorf(peakdesk.EUnauthenticated, "who"), 401, "unauthenticated", ""},
		{peakdesk.Errorf(peakdesk.EPermissionDenied, "no"), 403, "permission_denied", ""},
		{peakdesk.Errorf(peakdesk.ENotFound, "gone"), 404, "not_found", ""},
		{peakdesk.Errorf(peakdesk.EPayloadTooLarge, "big"), 413, "payload_too_large", ""},
		{&peakdesk.Error{Code: peakdesk.ERateLimited, Message: "slow down", RetryAfter: 1500 * time.Millisecond}, 429, "rate_limited", "2"},
		{&peakdesk.Error{Code: peakdesk.EOverloaded, Message: "busy", RetryAfter: time.Second}, 503, "overloaded", "1"},
		{fmt.Errorf("storage: dial 10.0.0.7:5432: password authentication failed"), 500, "internal", ""},
		{fmt.Errorf("wrapped: %w", peakdesk.Errorf(peakdesk.ENotFound, "gone")), 404, "not_found", ""},
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	for _, tc := range cases {
		w := httptest.NewRecorder()
		WriteError(w, httptest.NewRequest("GET", "/x", nil), log, tc.err)
		var body errorBody
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		if w.Code != tc.status || body.Error.Code != tc.code || w.Header().Get("Retry-After") != tc.retryAfter {
			t.Errorf("%v: %d %+v Retry-After %q", tc.err, w.Code, body, w.Header().Get("Retry-After"))
		}
		var e *peakdesk.Error
		if !errors.As(tc.err, &e) && (strings.Contains(w.Body.String(), "10.0.0.7") || body.Error.Message != "internal error") {
			t.Errorf("internal error leaked: %s", w.Body.String())
		}
	}
	if !strings.Contains(logs.String(), "password authentication failed") {
		t.Error("the internal error was not logged for operators")
	}
	if got := Status("no_such_code"); got != http.StatusInternalServerError {
		t.Errorf("unknown code maps to %d", got)
	}
}
