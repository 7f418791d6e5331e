package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/llm"
	"golang.org/x/sync/errgroup"
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

// benchLLMClient times n streamed single-turn calls, conc at a time, of the
// workers' LLM client (openai-go) to the simulator at base — a system
// prompt, a customer's question and the worker's tools, the shape of a
// worker's first call — and returns the CPU this process spent per call:
// the provider client's own share of an answer. The rest of the process is
// idle meanwhile but for its background work (heartbeats, metrics).
func benchLLMClient(ctx context.Context, base, model string, tools []llm.Tool, n, conc int) (float64, error) {
	hc := llm.NewHTTPClient()
	defer hc.CloseIdleConnections()
	c, err := llm.New(llm.Config{BaseURL: base + "/v1", Model: model, HTTPClient: hc})
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
	t0 := processCPU()
	g, ctx := errgroup.WithContext(ctx)
	for range conc {
		g.Go(func() error {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return nil
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
					return fmt.Errorf("bench: LLM client: %w", err)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return (processCPU() - t0).Seconds() * 1e6 / float64(n), nil
}
