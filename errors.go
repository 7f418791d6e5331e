// Package peakdesk holds the domain types shared by every role of the
// peakdesk service: messages, replies, priorities, conversations and the
// coded application error. It does no I/O.
package peakdesk

import (
	"errors"
	"fmt"
	"time"
)

// Error codes. Only the ingest edge turns them into HTTP statuses.
const (
	EInvalid          = "invalid_argument"
	EUnauthenticated  = "unauthenticated"
	EPermissionDenied = "permission_denied"
	ENotFound         = "not_found"
	// EConflict: the request clashes with the current state of what it
	// names (a conversation another agent has claimed).
	EConflict        = "conflict"
	EPayloadTooLarge = "payload_too_large"
	ERateLimited     = "rate_limited"
	EOverloaded      = "overloaded"
	EInternal        = "internal"
)

// Error is an application error with a code a client can act on. Message is
// safe to show to the caller; it never carries internals.
type Error struct {
	Code    string
	Message string
	// Field names the request field at fault, for invalid_argument.
	Field string
	// RetryAfter tells a rate_limited or overloaded caller when to retry.
	RetryAfter time.Duration
}

// Error implements error.
func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("peakdesk error: code=%s field=%s message=%s", e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("peakdesk error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns a coded error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldError returns an invalid_argument error naming the field at fault.
func FieldError(field, format string, args ...any) *Error {
	return &Error{Code: EInvalid, Field: field, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EInternal for
// any other non-nil error and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	default:
		return EInternal
	}
}

// ErrorMessage returns the caller-safe message of err: the message of an
// *Error, or a generic text for anything else so internals never leak.
func ErrorMessage(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Message
	default:
		return "internal error"
	}
}
