package answer

import (
	"context"
	"time"

	"github.com/peakdesk/peakdesk"
)

// Order answers without the LLM. A turn whose question is about the
// customer's orders (an order or a parcel, a refund's state) carries
// Request.Orders, which answers it from the shop's own data. The Answerer
// asks it first — it answers then only for a shop that wants such
// questions answered that way always (order_answers: direct) — and again
// when the model chain gave no answer (it failed, its breakers are open,
// a spend or user cap kept it from being called), before the FAQ: the
// shop's data says more about a parcel than any FAQ entry. Such answers
// have source peakdesk.SourceOrder; they are never coalesced with other
// customers' (they are this customer's).

// OrderAnswer is Request.Orders's answer.
type OrderAnswer struct {
	// Text is the reply, personal data masked.
	Text string
	// Masked counts what was masked in it, by kind.
	Masked map[string]int
	// General: the data says nothing of an order the customer named (no
	// recent orders, no refund asked for); a confident FAQ entry answers
	// instead, when there is one.
	General bool
}

// orderAnswer asks req.Orders (first: before the model chain) and returns
// its answer, or nil.
func (a *Answerer) orderAnswer(ctx context.Context, t turn, first bool) (ans *Answer, general bool) {
	if t.req.Orders == nil {
		return nil, false
	}
	// Past the deadline the order desk still says "checking" (and follows
	// up) rather than nothing.
	if time.Until(t.deadline) > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, t.deadline)
		defer cancel()
	}
	oa, ok := t.req.Orders(ctx, first)
	if !ok {
		return nil, false
	}
	return &Answer{Text: oa.Text, Source: peakdesk.SourceOrder, Masked: oa.Masked}, oa.General
}
