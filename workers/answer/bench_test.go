package answer_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// BenchmarkAnswerLLMDown measures Answer end to end while the provider is
// hard down and its breakers are open: every answer comes from the FAQ or is
// a handoff, with no call and no wait. The target: p99 ≤ 100 ms.
func BenchmarkAnswerLLMDown(b *testing.B) {
	a, bb := setup(b, llmsim.Faults{Outage: true}, nil)
	// Open both breakers (three failures each), outside the measurement.
	mustAnswer(b, a, request(bb.clock, "你好"))
	calls := bb.sim.Stats().Requests

	questions := []string{
		"双11满减规则是怎样的", "退款几天能到账", "发票怎么开", "how long will shipping take",
		"你们老板叫什么名字", "今晚几点开始抢购", "我的快递到哪了", "能开增值税专用发票吗",
	}
	var (
		mu      sync.Mutex
		lat     []time.Duration
		sources = map[string]int{}
	)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		src := map[string]int{}
		i := 0
		for pb.Next() {
			req := request(bb.clock, questions[i%len(questions)])
			if i%4 == 0 { // some turns of running conversations, never coalesced
				req.History = []llm.Turn{{Role: llm.RoleUser, Text: "在吗"}, {Role: llm.RoleAssistant, Text: "在的"}}
			}
			i++
			start := time.Now()
			ans, err := a.Answer(context.Background(), req)
			local = append(local, time.Since(start))
			if err != nil {
				b.Error(err)
				return
			}
			src[ans.Source]++
		}
		mu.Lock()
		lat = append(lat, local...)
		for k, v := range src {
			sources[k] += v
		}
		mu.Unlock()
	})
	b.StopTimer()
	if got := bb.sim.Stats().Requests; got != calls {
		b.Errorf("%d LLM calls with the breakers open", got-calls)
	}
	if sources[peakdesk.SourceLLM]+sources[peakdesk.SourceLLMSecondary] > 0 {
		b.Errorf("sources %v: the LLM is down", sources)
	}
	slices.Sort(lat)
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(float64(sources[peakdesk.SourceFAQ])/float64(len(lat)), "faq-share")
}

// BenchmarkCoalesce1000 offers 1,000 identical general questions at once,
// half to each of two Answerers (processes) sharing Redis, and reports how
// many LLM calls one burst cost.
func BenchmarkCoalesce1000(b *testing.B) {
	a1, bb := setup(b, llmsim.Faults{Latency: 100 * time.Millisecond}, nil)
	a2 := newAnswerer(b, bb.cfg)
	var calls int64
	b.ResetTimer()
	for i := range b.N {
		q := fmt.Sprintf("第%d场直播的满减怎么算？", i) // a new question per burst
		before := bb.sim.Stats().Requests
		var wg sync.WaitGroup
		for j := range 1000 {
			a := a1
			if j%2 == 1 {
				a = a2
			}
			wg.Go(func() {
				if _, err := a.Answer(context.Background(), request(bb.clock, q)); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		calls += bb.sim.Stats().Requests - before
	}
	b.ReportMetric(float64(calls)/float64(b.N), "llm-calls/burst")
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(p*float64(len(sorted))), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
