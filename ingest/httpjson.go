package ingest

import (
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"

	"github.com/peakdesk/peakdesk"
)

// statusOf maps an error code to its HTTP status. This is the only place
// codes become statuses.
func statusOf(code string) int {
	switch code {
	case peakdesk.EInvalid:
		return http.StatusBadRequest
	case peakdesk.EUnauthenticated:
		return http.StatusUnauthorized
	case peakdesk.EPermissionDenied:
		return http.StatusForbidden
	case peakdesk.ENotFound:
		return http.StatusNotFound
	case peakdesk.EPayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	case peakdesk.ERateLimited:
		return http.StatusTooManyRequests
	case peakdesk.EOverloaded:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// writeError answers with the error format of DESIGN.md §4. Internal errors
// are logged here and shown to the caller without their details.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	code := peakdesk.ErrorCode(err)
	detail := errorDetail{Code: code, Message: peakdesk.ErrorMessage(err)}
	var e *peakdesk.Error
	if errors.As(err, &e) {
		detail.Field = e.Field
		if e.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
		}
	}
	if code == peakdesk.EInternal {
		log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, statusOf(code), errorBody{Error: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers err in the error format of DESIGN.md §4, for the JSON
// APIs other roles serve (the dashboard's operator and admin API): one
// mapping of codes to statuses for every API.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	writeError(w, r, log, err)
}

// WriteJSON answers v as JSON with status, never cached.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }
