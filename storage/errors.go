package storage

import "github.com/peakdesk/peakdesk"

// codedError is a client-facing sentinel (ErrNotFound, ErrActionState,
// ErrDLQResolved) with a message that says more: errors.As finds the
// *peakdesk.Error with the caller-safe message ("action not found"), and
// errors.Is still matches the sentinel.
type codedError struct {
	err      *peakdesk.Error
	sentinel *peakdesk.Error
}

func (e *codedError) Error() string   { return e.err.Error() }
func (e *codedError) Unwrap() []error { return []error{e.err, e.sentinel} }

// notFound is ErrNotFound naming what was not found in the caller's shop.
func notFound(what string) error {
	return &codedError{err: peakdesk.Errorf(peakdesk.ENotFound, "%s not found", what), sentinel: ErrNotFound}
}

// actionStateError is ErrActionState saying why.
func actionStateError(why string) error {
	return &codedError{sentinel: ErrActionState, err: &peakdesk.Error{Code: ErrActionState.Code,
		Field: ErrActionState.Field, Message: ErrActionState.Message + ": " + why}}
}
