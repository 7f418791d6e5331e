package answer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// MaxToolRounds is how many rounds of tool calls one answer may run. The
// call after the last round asks the model for text (tool_choice "none"); a
// model that still asks for tools has failed, and the answer falls back.
const MaxToolRounds = 3

// MaxCallsPerRound is how many tool calls of one model response are run;
// the rest are answered "not run", so one response cannot fan out into
// dozens of calls to the shop.
const MaxCallsPerRound = 4

// errToolLoop is a model that asked for tools when it had to answer.
var errToolLoop = errors.New("answer: the model still asks for tools after the last round")

// conversation is the LLM part of one answer: the prompt growing by each
// round of tool calls and their results, and what the rounds cost and did.
type conversation struct {
	turns  []llm.Turn
	rounds int      // rounds of tool calls run
	said   []string // text the model wrote along with its tool calls
	shown  bool     // text went to OnDelta

	called  []string       // tools run, in order
	handoff bool           // a tool asked for a human agent
	masked  map[string]int // personal data masked in tool results
	capped  string         // the first cap that refused a call (Cap*)

	model                          string // the last model that answered a call
	promptTokens, completionTokens int
	cost                           int64
}

// text is the answer: what the model wrote along with its tool calls, then
// its final text — the same text the deltas showed.
func (cv *conversation) text(final string) string {
	if len(cv.said) == 0 {
		return final
	}
	return strings.Join(append(append([]string(nil), cv.said...), final), "\n")
}

// converse asks model to go on with cv, running the tools it calls, until it
// answers in text. Each round is one Caller.Do under the usual retry and
// breaker rules, its worst-case cost reserved against the shop's spend cap
// first (a *cappedError when it does not fit); the rounds stop at the
// request's deadline. stream, when set, receives the text as it comes.
func (a *Answerer) converse(ctx context.Context, t turn, route route, model string, cv *conversation,
	stream func(string)) (*llm.Completion, error) {
	offered := len(t.req.Tools) > 0
	for {
		if !a.cfg.Clock.Now().Before(t.deadline) {
			return nil, fmt.Errorf("answer: %s: %w", model, context.DeadlineExceeded)
		}
		var onDelta func(string)
		if stream != nil {
			// Text of an earlier round was shown: start on a new line, as
			// the answer's text does.
			sep := len(cv.said) > 0
			onDelta = func(s string) {
				if sep {
					stream("\n")
					sep = false
				}
				cv.shown = true
				stream(s)
			}
		}
		last := cv.rounds >= MaxToolRounds
		// The shop's spend cap: reserve the worst case of this round first.
		res, err := a.reserveCall(ctx, t, route, model, cv.turns)
		if err != nil {
			return nil, err
		}
		c, err := a.caller.Do(ctx, llm.Call{BaseURL: route.BaseURL, APIKey: route.APIKey, Model: model,
			Turns: cv.turns, Tools: t.req.Tools, NoToolCall: last, OnDelta: onDelta, Deadline: t.deadline,
			MaxTokens: route.limits.MaxTokens, MaxTokensParam: route.MaxTokensParam, OwnKey: route.ownKey,
			Temperature: route.temperature})
		var cost int64
		if err == nil {
			cost = a.cost(model, c)
		}
		a.settleCall(ctx, route, res, cost, err)
		if err != nil {
			return nil, err
		}
		cv.model = c.Model
		cv.promptTokens += c.PromptTokens
		cv.completionTokens += c.CompletionTokens
		cv.cost += cost
		switch {
		case len(c.ToolCalls) == 0:
			return c, nil
		case (last || !offered) && c.Text != "":
			// Calls it may not make now (or was never offered) beside an
			// answer: the answer will do.
			return c, nil
		case last || !offered:
			return nil, errToolLoop
		}

		// One round: the model's calls, run in its order, and their results.
		cv.turns = append(cv.turns, llm.Turn{Role: llm.RoleAssistant, Text: c.Text, ToolCalls: c.ToolCalls})
		if c.Text != "" {
			cv.said = append(cv.said, c.Text)
		}
		for i, call := range c.ToolCalls {
			result := "Not run: at most " + strconv.Itoa(MaxCallsPerRound) + " tool calls are run per response."
			if i < MaxCallsPerRound {
				result = a.runTool(ctx, t, cv, call)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			cv.turns = append(cv.turns, llm.Turn{Role: llm.RoleTool, ToolCallID: call.ID, Text: result})
		}
		cv.rounds++
	}
}

// runTool runs one call through the request's CallTool and returns the
// result for the model, personal data masked (and counted) like all text
// that goes to the LLM. A failing tool is a result too: the model tells the
// customer.
func (a *Answerer) runTool(ctx context.Context, t turn, cv *conversation, call llm.ToolCall) string {
	known := false
	for _, tool := range t.req.Tools {
		known = known || tool.Name == call.Name
	}
	if !known {
		return fmt.Sprintf("There is no tool named %q; use only the tools offered.", call.Name)
	}
	left := t.deadline.Sub(a.cfg.Clock.Now())
	if left <= 0 {
		return call.Name + " was not run: the answer is due now."
	}
	tctx, cancel := context.WithTimeout(ctx, left)
	defer cancel()
	cv.called = append(cv.called, call.Name)
	out, err := t.req.CallTool(tctx, call.Name, call.Args)
	if err != nil {
		if ctx.Err() == nil {
			// The error is ours (Postgres, say) and stays in our logs.
			t.log.Error("tool failed; the model is told so", "tool", call.Name, "err", err)
		}
		return call.Name + " failed because of a technical problem on our side. " +
			"Tell the customer it could not be done right now and offer a human agent."
	}
	t.log.Debug("tool called", "tool", call.Name, "handoff", out.Handoff)
	cv.handoff = cv.handoff || out.Handoff
	text, masked := pii.Mask(out.Text)
	cv.masked = addCounts(cv.masked, masked)
	if strings.TrimSpace(text) == "" {
		text = call.Name + " is done."
	}
	return text
}
