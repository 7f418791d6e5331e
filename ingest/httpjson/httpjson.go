// Package httpjson writes peakdesk's JSON answers and its error format
// (docs/api.md): {"error":{"code","message","field"?}} with the HTTP status
// of each code and Retry-After where due. It is the only place error codes
// become HTTP statuses; the edge and the operator API both answer through it.
package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/peakdesk/peakdesk"
)

// Status maps an error code to its HTTP status. This is the only place
// codes become statuses.
func Status(code string) int {
	switch code {
	case peakdesk.EInvalid:
		return http.StatusBadRequest
	case peakdesk.EUnauthenticated:
		return http.StatusUnauthorized
	case peakdesk.EPermissionDenied:
		return http.StatusForbidden
	case peakdesk.ENotFound:
		return http.StatusNotFound
	case peakdesk.EConflict:
		return http.StatusConflict
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
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the body of an error: its code, a caller-safe message and
// the request field at fault.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// WriteError answers with the error format of docs/api.md. Internal errors
// are logged here and shown to the caller without their details.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	code := peakdesk.ErrorCode(err)
	detail := ErrorDetail{Code: code, Message: peakdesk.ErrorMessage(err)}
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
	WriteJSON(w, Status(code), errorBody{Error: detail})
}

// WriteJSON answers status with v as JSON, never cached.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ReadBody reads r's body up to limit bytes: payload_too_large beyond it,
// invalid_argument if it cannot be read.
func ReadBody(r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, peakdesk.Errorf(peakdesk.EPayloadTooLarge, "request body exceeds %d bytes", limit)
	case err != nil:
		return nil, peakdesk.Errorf(peakdesk.EInvalid, "could not read request body")
	}
	return body, nil
}

// DecodeObject reads r's body (up to limit bytes) as exactly one JSON object
// into v, refusing unknown fields, with an invalid_argument error that names
// the field at fault.
func DecodeObject(r *http.Request, limit int64, v any) error {
	body, err := ReadBody(r, limit)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil && dec.More():
		return peakdesk.Errorf(peakdesk.EInvalid, "request body must be one JSON object")
	case err == nil:
		return nil
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return peakdesk.FieldError(typeErr.Field, "%s has the wrong type", typeErr.Field)
	case errors.Is(err, io.EOF):
		return peakdesk.Errorf(peakdesk.EInvalid, "request body is empty")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return peakdesk.FieldError(name, "unknown field %q", name)
	}
	return peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid JSON")
}
