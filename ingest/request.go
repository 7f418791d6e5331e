package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
)

// postRequest is the body of POST /v1/messages.
type postRequest struct {
	ConversationID string          `json:"conversation_id"`
	UserID         string          `json:"user_id"`
	Text           string          `json:"text"`
	Channel        string          `json:"channel"`
	Priority       string          `json:"priority"`
	ClientMsgID    string          `json:"client_msg_id"`
	Metadata       json.RawMessage `json:"metadata"`
}

const (
	maxUserIDLen  = 128
	maxKeyLen     = 128
	maxChannelLen = 32
)

// decodePostRequest parses and validates a POST /v1/messages body. It
// returns the request with text trimmed, or an invalid_argument error that
// names the field at fault.
func decodePostRequest(body []byte) (*postRequest, error) {
	if len(body) > peakdesk.MaxBodyBytes {
		return nil, peakdesk.Errorf(peakdesk.EPayloadTooLarge, "request body exceeds %d bytes", peakdesk.MaxBodyBytes)
	}
	// encoding/json would quietly turn invalid UTF-8 into U+FFFD.
	if !utf8.Valid(body) {
		return nil, peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid UTF-8")
	}
	var req postRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, jsonError(err)
	}
	if dec.More() {
		return nil, peakdesk.Errorf(peakdesk.EInvalid, "request body must be one JSON object")
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

func jsonError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return peakdesk.FieldError(typeErr.Field, "%s must be a %s", typeErr.Field, jsonKind(typeErr.Field))
	case errors.As(err, &typeErr):
		return peakdesk.Errorf(peakdesk.EInvalid, "request body must be a JSON object")
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF):
		return peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid JSON")
	case errors.Is(err, io.EOF):
		return peakdesk.Errorf(peakdesk.EInvalid, "request body is empty")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return peakdesk.FieldError(name, "unknown field %q", name)
	default:
		return peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid JSON")
	}
}

func jsonKind(field string) string {
	if field == "metadata" {
		return "JSON object"
	}
	return "string"
}

func (req *postRequest) validate() error {
	text, err := peakdesk.CheckText("text", req.Text)
	if err != nil {
		return err
	}
	req.Text = text
	if req.ConversationID != "" && !isHexID(req.ConversationID) {
		return peakdesk.FieldError("conversation_id", "conversation_id must be 32 lowercase hex characters")
	}
	if req.Priority != "" {
		if _, err := peakdesk.ParsePriority(req.Priority); err != nil {
			return err
		}
	}
	if req.UserID != "" && !printableASCII(req.UserID, maxUserIDLen) {
		return peakdesk.FieldError("user_id", "user_id must be 1..%d printable ASCII characters", maxUserIDLen)
	}
	if req.ClientMsgID != "" && !printableASCII(req.ClientMsgID, maxKeyLen) {
		return peakdesk.FieldError("client_msg_id", "client_msg_id must be 1..%d printable ASCII characters", maxKeyLen)
	}
	if req.Channel != "" && !peakdesk.ValidShopID(req.Channel) || len(req.Channel) > maxChannelLen {
		return peakdesk.FieldError("channel", "channel must be 1..%d characters of [A-Za-z0-9_-]", maxChannelLen)
	}
	if len(req.Metadata) > 0 {
		if len(req.Metadata) > peakdesk.MaxMetadataBytes {
			return peakdesk.FieldError("metadata", "metadata must be at most %d bytes", peakdesk.MaxMetadataBytes)
		}
		trimmed := bytes.TrimSpace(req.Metadata)
		switch {
		case bytes.Equal(trimmed, []byte("null")):
			req.Metadata = nil
		case len(trimmed) == 0 || trimmed[0] != '{':
			return peakdesk.FieldError("metadata", "metadata must be a JSON object")
		default:
			var compact bytes.Buffer
			if err := json.Compact(&compact, trimmed); err != nil {
				return peakdesk.FieldError("metadata", "metadata must be a JSON object")
			}
			req.Metadata = compact.Bytes()
		}
	}
	return nil
}

// printableASCII reports whether s is 1..limit bytes of printable ASCII
// without spaces, safe in a NATS header and a log line.
func printableASCII(s string, limit int) bool {
	if len(s) == 0 || len(s) > limit {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
