package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"runtime/debug"
	"sync"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/ingest/token"
)

// Batch limits of POST /v1/messages:batch.
const (
	MaxBatchMessages  = 100
	MaxBatchBodyBytes = 1 << 20

	// batchParallel caps the messages of one batch in flight at once.
	batchParallel = 32
)

// batchResult is one message's outcome in a batch answer: the same fields
// as a single POST's answer, or the error that message alone would have got.
type batchResult struct {
	// HTTPStatus is the status a single POST would have answered.
	HTTPStatus int `json:"http_status"`
	*accepted
	Error *batchError `json:"error,omitempty"`
}

type batchError struct {
	httpjson.ErrorDetail
	// RetryAfter is in seconds, for rate_limited and overloaded.
	RetryAfter int `json:"retry_after,omitempty"`
}

// postBatch accepts up to MaxBatchMessages messages in one request, for a
// shop's chat gateway that forwards many customers' messages at once (a
// service token posting each with its user_id). Each message goes through
// exactly what POST /v1/messages does — validation, limits, classification,
// admission, a durable publish with its own idempotency key — and gets its
// own result; the batch answers 200 once every accepted message is stored.
// Only a fault of the request as a whole (auth, body, shape) fails it all.
func (e *Edge) postBatch(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	if r.URL.Query().Has("wait") {
		return peakdesk.FieldError("wait", "wait is not supported on batches; follow the conversations' events")
	}
	if r.Header.Get("Idempotency-Key") != "" {
		return peakdesk.Errorf(peakdesk.EInvalid, "a batch takes client_msg_id on each message, not an Idempotency-Key header")
	}
	body, err := httpjson.ReadBody(r, MaxBatchBodyBytes)
	if err != nil {
		return err
	}
	items, err := decodeBatch(body)
	if err != nil {
		return err
	}
	info, err := e.postingShop(ctx, claims)
	if err != nil {
		return err
	}

	results := make([]batchResult, len(items))
	var wg sync.WaitGroup
	sem := make(chan struct{}, batchParallel)
	for i, raw := range items {
		// Concurrently, so the messages share Redis round trips and
		// JetStream acks (or one atomic batch) instead of paying one each;
		// bounded, so one batch cannot take every database connection.
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = e.acceptBatchItem(ctx, claims, info, raw)
		})
	}
	wg.Wait()
	httpjson.WriteJSON(w, http.StatusOK, struct {
		Results []batchResult `json:"results"`
	}{results})
	return nil
}

func (e *Edge) acceptBatchItem(ctx context.Context, claims *token.Claims, info *shopInfo, raw json.RawMessage) batchResult {
	res, err := func() (res accepted, err error) {
		// net/http recovers a handler's panic, not one in a goroutine it
		// started: a bug fails this message, not the process.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("ingest: batch message panicked: %v\n%s", p, debug.Stack())
			}
		}()
		req, err := decodePostRequest(raw)
		if err != nil {
			return accepted{}, err
		}
		key, err := idempotencyKey("", req.ClientMsgID)
		if err != nil {
			return accepted{}, err
		}
		return e.acceptMessage(ctx, claims, info, req, key, 0)
	}()
	if err != nil {
		code := peakdesk.ErrorCode(err)
		if code == peakdesk.EInternal {
			e.log.ErrorContext(ctx, "batch message failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "shop", claims.Shop, "err", err)
		}
		be := &batchError{ErrorDetail: httpjson.ErrorDetail{Code: code, Message: peakdesk.ErrorMessage(err)}}
		var pe *peakdesk.Error
		if errors.As(err, &pe) {
			be.Field = pe.Field
			if pe.RetryAfter > 0 {
				be.RetryAfter = int(math.Ceil(pe.RetryAfter.Seconds()))
			}
		}
		e.metrics.requests.WithLabelValues("post_batch_message", code).Inc()
		return batchResult{HTTPStatus: httpjson.Status(code), Error: be}
	}
	e.metrics.requests.WithLabelValues("post_batch_message", "ok").Inc()
	status := http.StatusAccepted
	if res.Status == peakdesk.StatusAnswered {
		status = http.StatusOK
	}
	return batchResult{HTTPStatus: status, accepted: &res}
}

// decodeBatch parses {"messages":[…]} into its raw messages, each decoded
// and validated on its own later so one bad message fails only itself.
func decodeBatch(body []byte) ([]json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid UTF-8")
	}
	var req struct {
		Messages []json.RawMessage `json:"messages"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "messages" {
			return nil, peakdesk.FieldError("messages", "messages must be an array of message objects")
		}
		return nil, jsonError(err)
	}
	if dec.More() {
		return nil, peakdesk.Errorf(peakdesk.EInvalid, "request body must be one JSON object")
	}
	switch n := len(req.Messages); {
	case n == 0:
		return nil, peakdesk.FieldError("messages", "messages must hold at least one message")
	case n > MaxBatchMessages:
		return nil, peakdesk.FieldError("messages", "messages must hold at most %d messages", MaxBatchMessages)
	}
	return req.Messages, nil
}
