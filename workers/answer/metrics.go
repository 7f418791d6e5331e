package answer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk/workers/llm"
)

type metrics struct {
	fallbacks     *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	tokens        *prometheus.CounterVec
	spend         *prometheus.CounterVec
	masked        *prometheus.CounterVec
	coalesce      *prometheus.CounterVec
	capped        *prometheus.CounterVec
	streamsBroken prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_fallbacks_total",
			Help: "Answers not written by the primary model, by source: llm_secondary, faq, handoff, cache.",
		}, []string{"source"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peakdesk_answerer_seconds",
			Help:    "Time to produce an answer (LLM calls, retries and fallbacks included), by source.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"source"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_tokens_total",
			Help: "Tokens of answers, by model and kind (prompt, completion).",
		}, []string{"model", "kind"}),
		spend: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_spend_usd_total",
			Help: "LLM spend by shop in US dollars, from the configured price table.",
		}, []string{"shop"}),
		masked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_pii_masked_total",
			Help: "Personal data masked in questions and replies, by kind.",
		}, []string{"kind"}),
		coalesce: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_coalesce_total",
			Help: "Coalescable questions by role: leader, follower, local_follower, cache_hit, timeout, alone.",
		}, []string{"role"}),
		capped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_capped_total",
			Help: "Turns a cap kept from a model, by shop and reason: spend_cap, user_calls, no_fx_rate, unpriced_model.",
		}, []string{"shop", "reason"}),
		streamsBroken: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_llm_streams_broken_total",
			Help: "Streams that broke after partial text was sent; a fallback answer replaced it.",
		}),
	}
	var err error
	for _, c := range []**prometheus.CounterVec{&m.fallbacks, &m.tokens, &m.spend, &m.masked, &m.coalesce, &m.capped} {
		if *c, err = llm.Register(reg, *c); err != nil {
			return nil, err
		}
	}
	if m.latency, err = llm.Register(reg, m.latency); err != nil {
		return nil, err
	}
	if m.streamsBroken, err = llm.Register(reg, m.streamsBroken); err != nil {
		return nil, err
	}
	return m, nil
}
