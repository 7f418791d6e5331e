package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// llmRequests returns how many chat completions the LLM simulator at base
// has been asked for.
func llmRequests(ctx context.Context, base string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/admin/stats", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("bench: LLM simulator stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("bench: LLM simulator stats: %s", resp.Status)
	}
	var st llmsim.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("bench: LLM simulator stats: %w", err)
	}
	return st.Requests, nil
}

// benchLLMClient times n streamed calls, conc at a time, of the workers'
// LLM client (openai-go) to the simulator at base with the worker's tools
// and a prompt of the worker's shape, and returns the CPU this process
// spent per call: the provider client's own share of an answer, measured
// while the rest of the process idles.
func benchLLMClient(ctx context.Context, base, model string, tools []llm.Tool, n, conc int) (float64, error) {
	c, err := llm.New(llm.Config{BaseURL: base + "/v1", Model: model})
	if err != nil {
		return 0, err
	}
	questions := []string{
		"双11满减怎么算？买两件能叠加优惠券吗？",
		"How long does delivery take to Shanghai during the sale?",
		"预售定金可以退吗？",
		"Can I change the size after I paid?",
	}
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	t0 := processCPU()
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				_, err := c.Do(ctx, llm.Request{
					Turns: []llm.Turn{
						{Role: llm.RoleSystem, Text: "You are the customer service assistant of a shop during its Double 11 sale. " +
							"Answer briefly, in the customer's language. Use the tools for orders, parcels, refunds and coupons; " +
							"never promise money the tools did not grant."},
						{Role: llm.RoleUser, Text: questions[i%int64(len(questions))]},
					},
					Tools:   tools,
					OnDelta: func(string) {},
				})
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, fmt.Errorf("bench: LLM client: %w", firstErr)
	}
	return (processCPU() - t0).Seconds() * 1e6 / float64(n), nil
}
