package answer_test

import (
	"context"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/answer"
)

// orderHook stands in for the order desk (outbox.Tools, tested there): it
// answers when asked after the LLM, and first only when direct is set.
type orderHook struct {
	direct      bool
	firstAsks   int
	fallbackAsk int
}

func (h *orderHook) fn(_ context.Context, first bool) (answer.OrderAnswer, bool) {
	if first {
		h.firstAsks++
		if !h.direct {
			return answer.OrderAnswer{}, false
		}
	} else {
		h.fallbackAsk++
	}
	return answer.OrderAnswer{Text: "您的订单 1234567 查到了：已发货"}, true
}

// With the LLM down, an order question is answered from the shop's data
// (source order), before the FAQ or a handoff, and costs no LLM call once
// the breakers are open; with the LLM up it is the LLM's; a shop that
// answers order questions directly never calls the LLM for them.
func TestOrderQuestionsWithoutTheLLM(t *testing.T) {
	t.Parallel()
	down, b := setup(t, llmsim.Faults{Outage: true}, nil)
	for range 3 { // open both breakers
		mustAnswer(t, down, request(b.clock, "你们老板叫什么名字"))
	}
	calls := b.sim.Stats().Requests
	h := &orderHook{}
	req := request(b.clock, "我的订单1234567到哪了")
	req.Orders = h.fn
	ans := mustAnswer(t, down, req)
	if ans.Source != peakdesk.SourceOrder || !strings.Contains(ans.Text, "已发货") || ans.Handoff {
		t.Fatalf("LLM down: %+v", ans)
	}
	if h.firstAsks != 1 || h.fallbackAsk != 1 || b.sim.Stats().Requests != calls {
		t.Fatalf("asked first %d, after the LLM %d; %d LLM calls", h.firstAsks, h.fallbackAsk, b.sim.Stats().Requests-calls)
	}

	up, b2 := setup(t, llmsim.Faults{}, nil)
	h = &orderHook{}
	req = request(b2.clock, "我的订单1234567到哪了")
	req.Orders = h.fn
	if ans := mustAnswer(t, up, req); ans.Source != peakdesk.SourceLLM || h.fallbackAsk != 0 {
		t.Fatalf("LLM up: %+v, asked after the LLM %d times", ans, h.fallbackAsk)
	}
	h = &orderHook{direct: true}
	req = request(b2.clock, "我的订单1234567到哪了")
	req.Orders = h.fn
	before := b2.sim.Stats().Requests
	if ans := mustAnswer(t, up, req); ans.Source != peakdesk.SourceOrder || b2.sim.Stats().Requests != before {
		t.Fatalf("direct: %+v, %d LLM calls", ans, b2.sim.Stats().Requests-before)
	}
}
