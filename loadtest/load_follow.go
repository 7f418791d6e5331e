package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/sse"
)

// errLoadBadBody marks a 2xx answer whose body could not be decoded.
var errLoadBadBody = errors.New("undecodable response body")

// do sends one JSON request with the user's token. A 2xx body is decoded into
// out; any other body into the returned error envelope (best effort).
func (r *loadRun) do(ctx context.Context, method, path, token string, in, out any) (int, loadErrorBody, error) {
	var eb loadErrorBody
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, eb, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
	if err != nil {
		return 0, eb, fmt.Errorf("new request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.post.Do(req)
	if err != nil {
		return 0, eb, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, eb, fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		_ = json.Unmarshal(b, &eb) // a non-JSON error body still has its status
		return resp.StatusCode, eb, nil
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, eb, fmt.Errorf("%s %s: %w: %v", method, path, errLoadBadBody, err)
		}
	}
	return resp.StatusCode, eb, nil
}

// follow hands an accepted message to the follow mode: in SSE mode the
// conversation's stream opens with its first accepted message; in poll mode
// each message not already answered gets a poller.
func (r *loadRun) follow(conv *loadConv, convID string, o *loadOffer, answered bool) {
	switch r.cfg.Follow {
	case LoadFollowSSE:
		if convID == "" {
			return // nothing to subscribe to; the final check will look
		}
		conv.mu.Lock()
		start := !conv.followed
		conv.followed = true
		conv.mu.Unlock()
		if start {
			r.follows.Go(func() { r.streamConv(r.followCtx, conv, convID) })
		}
	case LoadFollowPoll:
		if !answered {
			r.follows.Go(func() { r.poll(r.followCtx, conv, o) })
		}
	}
}

// streamConv reads the conversation's reply events until ctx ends,
// reconnecting with Last-Event-ID whenever the stream drops.
func (r *loadRun) streamConv(ctx context.Context, conv *loadConv, convID string) {
	lastID := ""
	wait := 50 * time.Millisecond
	for {
		got, err := r.streamOnce(ctx, conv, convID, &lastID)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.reconnects++
		r.mu.Unlock()
		r.cfg.Logger.Debug("load event stream dropped", "conversation_id", convID, "last_event_id", lastID, "err", err)
		if got {
			wait = 50 * time.Millisecond
		}
		if peakdesk.Sleep(ctx, wait) != nil {
			return
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// streamOnce reads one connection of the event stream. It reports whether any
// event arrived, and advances lastID as events are dispatched.
func (r *loadRun) streamOnce(ctx context.Context, conv *loadConv, convID string, lastID *string) (got bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		r.base+"/v1/conversations/"+url.PathEscape(convID)+"/events", nil)
	if err != nil {
		return false, fmt.Errorf("new request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+conv.token)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if *lastID != "" {
		req.Header.Set("Last-Event-ID", *lastID)
	}
	resp, err := r.stream.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return false, fmt.Errorf("event stream: status %d", resp.StatusCode)
	}

	events := sse.NewReader(resp.Body)
	for {
		ev, err := events.Next()
		if id := events.LastEventID(); id != "" {
			*lastID = id
		}
		if err != nil {
			return got, err
		}
		if ev.Type == "" || ev.Type == "reply" {
			r.handleEvent(ev.Data)
			got = true
		}
	}
}

// handleEvent records one reply event.
func (r *loadRun) handleEvent(data string) {
	at := time.Now()
	var rep loadReply
	if err := json.Unmarshal([]byte(data), &rep); err != nil || rep.ID == "" {
		r.sample(fmt.Sprintf("event stream: undecodable reply event %.80q", data))
		return
	}
	r.observe(rep.MessageIDs, loadObs{replyID: rep.ID, source: rep.Source, at: at})
}

// loadMessageState is the part of GET /v1/messages/{id} the generator reads.
type loadMessageState struct {
	Status string     `json:"status"`
	Reply  *loadReply `json:"reply"`
}

// poll asks for the message's state with growing pauses until it is answered
// or failed, or ctx ends.
func (r *loadRun) poll(ctx context.Context, conv *loadConv, o *loadOffer) {
	wait := 100 * time.Millisecond
	for {
		jitter := time.Duration(mrand.Int64N(int64(wait / 5)))
		if peakdesk.Sleep(ctx, wait+jitter) != nil {
			return
		}
		wait = min(wait*3/2, 2*time.Second)
		select {
		case r.pollSem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		var st loadMessageState
		status, _, err := r.do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(o.messageID), conv.token, nil, &st)
		<-r.pollSem
		if err != nil || status != http.StatusOK {
			continue // not visible yet, or a passing error: ask again
		}
		switch {
		case st.Status == "answered" && st.Reply != nil && st.Reply.ID != "":
			r.observe([]string{o.messageID}, loadObs{replyID: st.Reply.ID, source: st.Reply.Source, at: time.Now()})
			return
		case st.Status == "failed":
			r.mu.Lock()
			o.failed = true
			r.mu.Unlock()
			return
		}
	}
}

// unanswered returns the accepted messages with no answer yet.
func (r *loadRun) unanswered() []*loadOffer {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*loadOffer
	for _, o := range r.offers {
		if o.outcome == loadAccepted && o.answeredAt.IsZero() {
			out = append(out, o)
		}
	}
	return out
}

// loadEach runs fn for every item on up to n goroutines and waits for them.
func loadEach[T any](n int, items []T, fn func(T)) {
	ch := make(chan T)
	var wg sync.WaitGroup
	for range min(n, len(items)) {
		wg.Go(func() {
			for it := range ch {
				fn(it)
			}
		})
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
}

// checkUnanswered asks once for every message SSE did not see answered. One
// answered by the end of the follow phase counts as answered (dated by the
// reply's created_at) and as missed by SSE, so a delivery gap shows in the
// report without turning into a false loss.
func (r *loadRun) checkUnanswered(ctx context.Context, followEnd time.Time) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	loadEach(r.cfg.Concurrency, r.unanswered(), func(o *loadOffer) {
		var st loadMessageState
		status, _, err := r.do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(o.messageID), r.convs[o.conv].token, nil, &st)
		if err != nil || status != http.StatusOK {
			return
		}
		switch {
		case st.Status == "answered" && st.Reply != nil && st.Reply.ID != "":
			at := st.Reply.CreatedAt
			if at.IsZero() {
				at = followEnd
			}
			if at.After(followEnd) {
				return // answered, but after the deadline: still lost
			}
			if at.Before(o.sentAt) {
				at = o.sentAt // clocks of client and server differ
			}
			r.mu.Lock()
			o.missed = true
			r.mu.Unlock()
			r.observe([]string{o.messageID}, loadObs{replyID: st.Reply.ID, source: st.Reply.Source, at: at})
		case st.Status == "failed":
			r.mu.Lock()
			o.failed = true
			r.mu.Unlock()
		}
	})
}

// unstoredConvs returns the conversations with an answer on POST that no
// event showed stored.
func (r *loadRun) unstoredConvs() map[int]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	convs := map[int]bool{}
	for _, o := range r.byID {
		if o.onPost && !o.stored {
			convs[o.conv] = true
		}
	}
	return convs
}

// auditConversations reads conversations once at the end of a run, from
// Postgres: after a poll run every one (polling stops at the first answer,
// so a second distinct reply to the same message only shows in the
// conversation's reply list); after an SSE run those in only (answers given
// on a POST whose event went by unseen are then still seen stored). A nil
// only means every conversation; an empty one, none.
func (r *loadRun) auditConversations(ctx context.Context, only map[int]bool) {
	if only != nil && len(only) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	var convs []*loadConv
	for _, c := range r.convs {
		if c.conversationID() != "" && (only == nil || only[c.idx]) {
			convs = append(convs, c)
		}
	}
	loadEach(r.cfg.Concurrency, convs, func(c *loadConv) {
		var conv struct {
			Replies []loadReply `json:"replies"`
		}
		status, _, err := r.do(ctx, http.MethodGet, "/v1/conversations/"+url.PathEscape(c.conversationID()), c.token, nil, &conv)
		if err != nil || status != http.StatusOK {
			r.mu.Lock()
			r.auditErrors++
			r.mu.Unlock()
			if err == nil {
				err = fmt.Errorf("status %d", status)
			}
			r.sample(fmt.Sprintf("audit conversation %s: %v", c.conversationID(), err))
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, rep := range conv.Replies {
			for _, id := range rep.MessageIDs {
				o := r.byID[id]
				if o == nil || o.answeredAt.IsZero() || rep.ID == "" {
					continue // an unanswered message stays unanswered: its time is unknown
				}
				if rep.ID == o.postReply && !o.stored {
					r.markStoredLocked(o)
				}
				if !slices.Contains(o.replyIDs, rep.ID) {
					o.replyIDs = append(o.replyIDs, rep.ID)
				}
			}
		}
	})
}
