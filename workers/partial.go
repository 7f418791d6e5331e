package workers

import (
	"encoding/json"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// PartialReply is the body of a partial reply.
type PartialReply struct {
	ConversationID string   `json:"conversation_id"`
	MessageIDs     []string `json:"message_ids"`
	// Text is the answer so far; the reply event's text supersedes it.
	Text string `json:"text"`
}

// partialEvery is the least time between two partial replies of an answer.
const partialEvery = 100 * time.Millisecond

// partials publishes the text of one answer as it streams, at most every
// partialEvery, on the customer's partial subject (queue.PartialMsg). It is
// best effort: a partial that cannot be sent is skipped.
type partials struct {
	w     *Worker
	reply *peakdesk.Reply

	mu   sync.Mutex
	text strings.Builder
	last time.Time // when the last partial went out
	sent bool
}

func (w *Worker) newPartials(r *peakdesk.Reply) *partials {
	return &partials{w: w, reply: r}
}

// add is the Answerer's OnDelta.
func (p *partials) add(delta string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.text.WriteString(delta)
	now := time.Now()
	if p.sent && now.Sub(p.last) < partialEvery {
		return
	}
	// The reply is masked once complete; mask what is shown of it too, and
	// hold back a trailing run of digits that may be the start of a number
	// the mask would catch once complete.
	text, _ := pii.Mask(strings.TrimRightFunc(p.text.String(), maybeNumber))
	if text == "" {
		return
	}
	data, err := json.Marshal(PartialReply{ConversationID: p.reply.ConversationID, MessageIDs: p.reply.MessageIDs,
		Text: text})
	if err != nil {
		return
	}
	msg := queue.PartialMsg(p.reply.ShopID, p.reply.UserID, p.reply.ConversationID, data)
	if err := p.w.cfg.JS.Conn().PublishMsg(msg); err != nil {
		return
	}
	p.last, p.sent = now, true
}

// shown reports whether any partial reply went out (false for nil).
func (p *partials) shown() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

// maybeNumber reports whether r may be part of a phone, ID-card or card
// number, as the masker reads it: full-width digits are digits, and format
// characters (zero-width spaces…) are not there at all.
func maybeNumber(r rune) bool {
	return r >= '0' && r <= '9' || r >= '０' && r <= '９' || r == ' ' || r == '-' || unicode.Is(unicode.Cf, r)
}
