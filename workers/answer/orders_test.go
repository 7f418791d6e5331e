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

// generalHook is an order desk whose data says nothing of the customer's
// orders (no recent orders, no refund): its answer is General.
func generalHook(asked *int) func(context.Context, bool) (answer.OrderAnswer, bool) {
	return func(_ context.Context, first bool) (answer.OrderAnswer, bool) {
		if first {
			return answer.OrderAnswer{}, false
		}
		*asked++
		return answer.OrderAnswer{Text: "没有查到您最近的订单。", General: true}, true
	}
}

// With the LLM down, a general question that only looks like an order
// question ("退款多久能到账？") gets the FAQ's answer when the shop's data
// says nothing of the customer's orders; the data's "no orders" answers
// only when the FAQ has nothing confident. An answer about an order of
// theirs still comes before the FAQ.
func TestAGeneralQuestionThatLooksLikeAnOrderQuestionGetsTheFAQ(t *testing.T) {
	t.Parallel()
	down, b := setup(t, llmsim.Faults{Outage: true}, nil)
	for range 3 { // open both breakers
		mustAnswer(t, down, request(b.clock, "你们老板叫什么名字"))
	}
	asked := 0
	req := request(b.clock, "退款多久能到账？")
	req.Orders = generalHook(&asked)
	ans := mustAnswer(t, down, req)
	if ans.Source != peakdesk.SourceFAQ || !strings.Contains(ans.Text, "原路退回") || asked != 1 {
		t.Fatalf("no orders, a FAQ question: %+v (order desk asked %d times)", ans, asked)
	}

	req = request(b.clock, "我的包裹怎么还没到，查一下物流")
	req.Orders = generalHook(&asked)
	if ans := mustAnswer(t, down, req); ans.Source != peakdesk.SourceOrder || !strings.Contains(ans.Text, "没有查到") {
		t.Fatalf("no orders, no FAQ entry: %+v", ans)
	}

	h := &orderHook{}
	req = request(b.clock, "退款多久能到账？")
	req.Orders = h.fn
	if ans := mustAnswer(t, down, req); ans.Source != peakdesk.SourceOrder || !strings.Contains(ans.Text, "已发货") {
		t.Fatalf("facts of the customer's order: %+v", ans)
	}
}
