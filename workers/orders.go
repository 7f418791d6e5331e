package workers

import (
	"context"
	"log/slog"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/workers/answer"
)

// orders returns the Request.Orders of a turn whose question is about the
// customer's orders: it answers from the shop's data (outbox.Tools) when
// the shop wants that always (first) or the LLM gave no answer, and keeps
// the follow-up it may promise for the reply's transaction.
func (a *turnAnswer) orders(tools *outbox.Tools, call outbox.DirectCall, log *slog.Logger) func(context.Context, bool) (answer.OrderAnswer, bool) {
	return func(ctx context.Context, first bool) (answer.OrderAnswer, bool) {
		if first && !tools.OrderAnswersDirect(ctx, call.Shop) {
			return answer.OrderAnswer{}, false
		}
		d, err := tools.AnswerOrder(ctx, call)
		if err != nil {
			log.Warn("order answer failed; answering otherwise", "err", err)
			return answer.OrderAnswer{}, false
		}
		a.mu.Lock()
		a.actions = append(a.actions, d.Actions...)
		a.mu.Unlock()
		return answer.OrderAnswer{Text: d.Text, Masked: d.Masked, General: d.General}, true
	}
}

// followUp reports whether the reply promises an order follow-up: the
// customer is told the facts come later (Reply.FollowUp).
func (a *turnAnswer) followUp() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, act := range a.actions {
		if act.Kind == peakdesk.ActionOrderFollowUp {
			return true
		}
	}
	return false
}
