// Package llmsim is a simulated OpenAI-compatible LLM provider for dev mode,
// tests and load tests (`peakdesk mockllm`): /v1/chat/completions, plain and
// streamed, with usage, tool calls on cue and deterministic answers that
// quote the last user message, and faults on demand (latency, error
// statuses with Retry-After, requests-per-minute limits, outage, hanging
// and cut streams, refused keys), changeable at run time under /admin.
package llmsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peakdesk/peakdesk/workers/llm"
)

// Defaults the simulator fills in when a fault setting is left at zero.
const (
	llmDefaultModel      = "llmsim-1"
	llmDefaultRetryAfter = time.Second
	llmDefaultHangMax    = 10 * time.Minute
	llmMaxBodyBytes      = 8 << 20
)

// Faults are the simulated LLM provider's run-time settings. The zero value is a
// healthy provider that answers at once. In JSON the fields are snake_case,
// durations are whole milliseconds in fields ending in `_ms`, and error_statuses
// maps a status code (as a string key) to its weight. Decoding JSON into an
// existing Faults changes only the fields present in the JSON.
type Faults struct {
	// Model is echoed in responses when a request names no model (default "llmsim-1").
	Model string
	// Latency is the mean wait before the first byte of an answer (time to first token).
	Latency time.Duration
	// LatencyJitter spreads the wait uniformly over Latency ± LatencyJitter.
	LatencyJitter time.Duration
	// SlowRate (0..1) is the share of requests that wait Slow instead of Latency: a slow tail.
	SlowRate float64
	// Slow is the wait of a request in the slow tail.
	Slow time.Duration
	// ChunkDelay is the pause between two chunks of a streamed answer.
	ChunkDelay time.Duration
	// ErrorRate (0..1) is the share of requests answered with an error after their wait.
	ErrorRate float64
	// ErrorStatuses weighs the HTTP statuses of injected errors, e.g. {429: 1, 500: 1}.
	// Empty means 500 only.
	ErrorStatuses map[int]float64
	// RetryAfter is announced by injected 429 errors (default 1 s).
	RetryAfter time.Duration
	// InsufficientQuota answers every request with 429 insufficient_quota, which must not be retried.
	InsufficientQuota bool
	// KeyErrors answers every request whose bearer key is listed with that status (400..599),
	// before reading it, as a provider's key check would: e.g. {"sk-revoked": 401} for a bad
	// key, {"sk-busy": 429} for a key over its own rate limit (with Retry-After).
	KeyErrors map[string]int
	// RPM limits requests per minute over the whole simulator (burst rpm/60, at least 1); 0 is unlimited.
	RPM int
	// TPM limits prompt+completion tokens per minute (burst tpm/60, at least 1); 0 is unlimited.
	TPM int
	// Outage answers every request with 503 at once.
	Outage bool
	// Hang holds every request until the client goes away or HangMax passes (then 504).
	Hang bool
	// HangMax caps a hanging request (default 10 min).
	HangMax time.Duration
	// StreamCutRate (0..1) is the share of streams whose connection is aborted after the
	// first chunk and before [DONE].
	StreamCutRate float64
	// Seed seeds the random source, so runs with the same request order are reproducible.
	// Changing it re-seeds the source.
	Seed uint64
}

// llmFaultsJSON is the wire form of Faults.
type llmFaultsJSON struct {
	Model           string  `json:"model"`
	LatencyMS       int64   `json:"latency_ms"`
	LatencyJitterMS int64   `json:"latency_jitter_ms"`
	SlowRate        float64 `json:"slow_rate"`
	SlowMS          int64   `json:"slow_ms"`
	ChunkDelayMS    int64   `json:"chunk_delay_ms"`
	ErrorRate       float64 `json:"error_rate"`
	// A pointer so that decoding can tell "absent" (keep) from "given" (replace).
	ErrorStatuses     *map[int]float64 `json:"error_statuses"`
	RetryAfterMS      int64            `json:"retry_after_ms"`
	InsufficientQuota bool             `json:"insufficient_quota"`
	KeyErrors         *map[string]int  `json:"key_errors"`
	RPM               int              `json:"rpm"`
	TPM               int              `json:"tpm"`
	Outage            bool             `json:"outage"`
	Hang              bool             `json:"hang"`
	HangMaxMS         int64            `json:"hang_max_ms"`
	StreamCutRate     float64          `json:"stream_cut_rate"`
	Seed              uint64           `json:"seed"`
}

func (f Faults) toJSON() llmFaultsJSON {
	return llmFaultsJSON{
		Model:             f.Model,
		LatencyMS:         f.Latency.Milliseconds(),
		LatencyJitterMS:   f.LatencyJitter.Milliseconds(),
		SlowRate:          f.SlowRate,
		SlowMS:            f.Slow.Milliseconds(),
		ChunkDelayMS:      f.ChunkDelay.Milliseconds(),
		ErrorRate:         f.ErrorRate,
		RetryAfterMS:      f.RetryAfter.Milliseconds(),
		InsufficientQuota: f.InsufficientQuota,
		RPM:               f.RPM,
		TPM:               f.TPM,
		Outage:            f.Outage,
		Hang:              f.Hang,
		HangMaxMS:         f.HangMax.Milliseconds(),
		StreamCutRate:     f.StreamCutRate,
		Seed:              f.Seed,
	}
}

// MarshalJSON encodes the faults in their wire form (durations in milliseconds).
func (f Faults) MarshalJSON() ([]byte, error) {
	w := f.toJSON()
	statuses := f.ErrorStatuses
	if statuses == nil {
		statuses = map[int]float64{}
	}
	w.ErrorStatuses = &statuses
	keys := f.KeyErrors
	if keys == nil {
		keys = map[string]int{}
	}
	w.KeyErrors = &keys
	return json.Marshal(w)
}

// UnmarshalJSON decodes the wire form on top of the current values: fields absent
// from the JSON keep their values, error_statuses and key_errors are replaced as
// a whole when given, and unknown fields are an error so that typos do not go unnoticed.
func (f *Faults) UnmarshalJSON(b []byte) error {
	w := f.toJSON()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("llm faults: %w", err)
	}
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	statuses := f.ErrorStatuses
	if w.ErrorStatuses != nil {
		statuses = *w.ErrorStatuses
	}
	keys := f.KeyErrors
	if w.KeyErrors != nil {
		keys = *w.KeyErrors
	}
	*f = Faults{
		Model:             w.Model,
		Latency:           ms(w.LatencyMS),
		LatencyJitter:     ms(w.LatencyJitterMS),
		SlowRate:          w.SlowRate,
		Slow:              ms(w.SlowMS),
		ChunkDelay:        ms(w.ChunkDelayMS),
		ErrorRate:         w.ErrorRate,
		ErrorStatuses:     statuses,
		RetryAfter:        ms(w.RetryAfterMS),
		InsufficientQuota: w.InsufficientQuota,
		KeyErrors:         keys,
		RPM:               w.RPM,
		TPM:               w.TPM,
		Outage:            w.Outage,
		Hang:              w.Hang,
		HangMax:           ms(w.HangMaxMS),
		StreamCutRate:     w.StreamCutRate,
		Seed:              w.Seed,
	}
	return nil
}

// Validate reports the first setting that is out of range, naming its JSON field.
func (f Faults) Validate() error {
	rates := []struct {
		name string
		v    float64
	}{{"slow_rate", f.SlowRate}, {"error_rate", f.ErrorRate}, {"stream_cut_rate", f.StreamCutRate}}
	for _, r := range rates {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			return fmt.Errorf("llm faults: %s must be within 0..1, got %v", r.name, r.v)
		}
	}
	durations := []struct {
		name string
		v    time.Duration
	}{
		{"latency_ms", f.Latency}, {"latency_jitter_ms", f.LatencyJitter}, {"slow_ms", f.Slow},
		{"chunk_delay_ms", f.ChunkDelay}, {"retry_after_ms", f.RetryAfter}, {"hang_max_ms", f.HangMax},
	}
	for _, d := range durations {
		if d.v < 0 {
			return fmt.Errorf("llm faults: %s must not be negative, got %d", d.name, d.v.Milliseconds())
		}
	}
	if f.RPM < 0 {
		return fmt.Errorf("llm faults: rpm must not be negative, got %d", f.RPM)
	}
	if f.TPM < 0 {
		return fmt.Errorf("llm faults: tpm must not be negative, got %d", f.TPM)
	}
	for status, weight := range f.ErrorStatuses {
		if status < 400 || status > 599 {
			return fmt.Errorf("llm faults: error_statuses: status %d is not within 400..599", status)
		}
		if math.IsNaN(weight) || math.IsInf(weight, 0) || weight < 0 {
			return fmt.Errorf("llm faults: error_statuses: weight of %d must be a non-negative number, got %v", status, weight)
		}
	}
	for key, status := range f.KeyErrors {
		if status < 400 || status > 599 {
			return fmt.Errorf("llm faults: key_errors: status %d of a key is not within 400..599", status)
		}
		if key == "" {
			return errors.New("llm faults: key_errors: a key must not be empty")
		}
	}
	return nil
}

// normalised returns a copy that owns its map, with out-of-range values clamped
// and defaults filled in, so the hot path never has to check them.
func (f Faults) normalised() Faults {
	clamp01 := func(v float64) float64 {
		if math.IsNaN(v) {
			return 0
		}
		return min(max(v, 0), 1)
	}
	f.SlowRate = clamp01(f.SlowRate)
	f.ErrorRate = clamp01(f.ErrorRate)
	f.StreamCutRate = clamp01(f.StreamCutRate)
	f.Latency = max(f.Latency, 0)
	f.LatencyJitter = max(f.LatencyJitter, 0)
	f.Slow = max(f.Slow, 0)
	f.ChunkDelay = max(f.ChunkDelay, 0)
	f.RPM = max(f.RPM, 0)
	f.TPM = max(f.TPM, 0)
	if f.Model == "" {
		f.Model = llmDefaultModel
	}
	if f.RetryAfter <= 0 {
		f.RetryAfter = llmDefaultRetryAfter
	}
	if f.HangMax <= 0 {
		f.HangMax = llmDefaultHangMax
	}
	statuses := make(map[int]float64, len(f.ErrorStatuses))
	for status, weight := range f.ErrorStatuses {
		if status >= 400 && status <= 599 && weight > 0 && !math.IsInf(weight, 0) {
			statuses[status] = weight
		}
	}
	f.ErrorStatuses = statuses
	keys := make(map[string]int, len(f.KeyErrors))
	for key, status := range f.KeyErrors {
		if key != "" && status >= 400 && status <= 599 {
			keys[key] = status
		}
	}
	f.KeyErrors = keys
	return f
}

// llmConfig is an immutable snapshot of the faults plus what the hot path derives
// from them; it is swapped atomically as a whole.
type llmConfig struct {
	faults Faults
	// statuses and cumWeights pick an injected error status; sorted for reproducibility.
	statuses   []int
	cumWeights []float64
}

func llmNewConfig(f Faults) *llmConfig {
	c := &llmConfig{faults: f}
	for status := range f.ErrorStatuses {
		c.statuses = append(c.statuses, status)
	}
	slices.Sort(c.statuses)
	total := 0.0
	for _, status := range c.statuses {
		total += f.ErrorStatuses[status]
		c.cumWeights = append(c.cumWeights, total)
	}
	return c
}

// errorStatus picks the status of an injected error from a uniform roll in [0,1).
func (c *llmConfig) errorStatus(roll float64) int {
	if len(c.statuses) == 0 {
		return http.StatusInternalServerError
	}
	target := roll * c.cumWeights[len(c.cumWeights)-1]
	for i, cum := range c.cumWeights {
		if target < cum {
			return c.statuses[i]
		}
	}
	return c.statuses[len(c.statuses)-1]
}

// Stats are the simulator's counters since it started or was last reset.
type Stats struct {
	// Requests counts chat completion requests as they arrive.
	Requests int64 `json:"requests"`
	// ByStatus counts finished chat completion requests by the status they got;
	// 499 means the client went away before an answer was sent.
	ByStatus map[int]int64 `json:"by_status"`
	// Streams counts streamed answers that were started.
	Streams int64 `json:"streams"`
	// StreamsCut counts streams aborted on purpose (stream_cut_rate).
	StreamsCut int64 `json:"streams_cut"`
	// ToolCalls counts tool calls answered, by function name.
	ToolCalls map[string]int64 `json:"tool_calls"`
	// InFlight is the number of chat completion requests being handled now.
	InFlight int64 `json:"in_flight"`
	// MaxInFlight is the highest InFlight seen.
	MaxInFlight int64 `json:"max_in_flight"`
	// PromptTokens and CompletionTokens sum the usage of answers delivered in full.
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	// WithMaxTokens counts read requests that set a completion limit (max_tokens or
	// max_completion_tokens); Truncated counts answers cut at it (finish_reason "length").
	WithMaxTokens int64 `json:"with_max_tokens"`
	Truncated     int64 `json:"truncated"`
	// ByKey counts requests by the fingerprint of their bearer key (llm.KeyFingerprint),
	// never the key itself.
	ByKey map[string]int64 `json:"by_key"`
}

// llmCounters are the lock-free counters behind Stats.
type llmCounters struct {
	requests         atomic.Int64
	byStatus         [600]atomic.Int64
	streams          atomic.Int64
	streamsCut       atomic.Int64
	toolCalls        [len(llmToolNames)]atomic.Int64
	inFlight         atomic.Int64
	maxInFlight      atomic.Int64
	promptTokens     atomic.Int64
	completionTokens atomic.Int64
	withMaxTokens    atomic.Int64
	truncated        atomic.Int64
	byKeyMu          sync.Mutex
	byKey            map[string]int64
}

func (c *llmCounters) enter() {
	c.requests.Add(1)
	n := c.inFlight.Add(1)
	for {
		m := c.maxInFlight.Load()
		if n <= m || c.maxInFlight.CompareAndSwap(m, n) {
			return
		}
	}
}

// countKey counts a request under the fingerprint of its bearer key.
func (c *llmCounters) countKey(key string) {
	fp := llm.KeyFingerprint(key)
	c.byKeyMu.Lock()
	defer c.byKeyMu.Unlock()
	if c.byKey == nil {
		c.byKey = map[string]int64{}
	}
	c.byKey[fp]++
}

func (c *llmCounters) leave(status int) {
	c.inFlight.Add(-1)
	if status >= 0 && status < len(c.byStatus) {
		c.byStatus[status].Add(1)
	}
}

// Sim is a simulated OpenAI-compatible LLM provider with faults on demand. It
// is an http.Handler; all methods are safe for concurrent use.
type Sim struct {
	mux *http.ServeMux
	cfg atomic.Pointer[llmConfig]

	// setMu serialises changes of the faults (and the admin read-modify-write).
	setMu sync.Mutex

	rngMu sync.Mutex
	rng   *rand.Rand

	limMu    sync.Mutex
	reqLimit llmBucket
	tokLimit llmBucket

	// now is the clock of the rate limits; tests may replace it before serving.
	now func() time.Time

	seq   atomic.Uint64
	stats llmCounters
}

// New returns a simulator with the given faults (see Faults for defaults).
func New(f Faults) *Sim {
	s := &Sim{now: time.Now}
	f = f.normalised()
	s.rng = rand.New(rand.NewPCG(f.Seed, llmSeedStream))
	s.cfg.Store(llmNewConfig(f))
	s.resetLimits(f, s.now())

	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /v1/chat/completions", s.handleChat)
	s.mux.HandleFunc("GET /v1/models", s.handleModels)
	s.mux.HandleFunc("GET /admin/faults", s.handleGetFaults)
	s.mux.HandleFunc("PUT /admin/faults", s.handlePutFaults)
	s.mux.HandleFunc("GET /admin/stats", s.handleStats)
	s.mux.HandleFunc("POST /admin/reset", s.handleReset)
	return s
}

// llmSeedStream is the fixed second half of the PCG seed.
const llmSeedStream = 0x9e3779b97f4a7c15

// ServeHTTP serves the OpenAI-compatible routes and the admin routes.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// SetFaults replaces the faults. Out-of-range values are clamped; use
// Faults.Validate first to reject them instead. A changed Seed re-seeds the
// random source and a changed RPM or TPM starts its limit with a full burst.
func (s *Sim) SetFaults(f Faults) {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.setFaultsLocked(f)
}

func (s *Sim) setFaultsLocked(f Faults) {
	f = f.normalised()
	old := s.cfg.Load().faults
	if f.Seed != old.Seed {
		s.rngMu.Lock()
		s.rng = rand.New(rand.NewPCG(f.Seed, llmSeedStream))
		s.rngMu.Unlock()
	}
	if f.RPM != old.RPM || f.TPM != old.TPM {
		s.limMu.Lock()
		now := s.now()
		if f.RPM != old.RPM {
			s.reqLimit = llmNewBucket(f.RPM, now)
		}
		if f.TPM != old.TPM {
			s.tokLimit = llmNewBucket(f.TPM, now)
		}
		s.limMu.Unlock()
	}
	s.cfg.Store(llmNewConfig(f))
}

func (s *Sim) resetLimits(f Faults, now time.Time) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	s.reqLimit = llmNewBucket(f.RPM, now)
	s.tokLimit = llmNewBucket(f.TPM, now)
}

// Faults returns the faults in effect, with defaults filled in.
func (s *Sim) Faults() Faults {
	f := s.cfg.Load().faults
	statuses := make(map[int]float64, len(f.ErrorStatuses))
	for k, v := range f.ErrorStatuses {
		statuses[k] = v
	}
	f.ErrorStatuses = statuses
	keys := make(map[string]int, len(f.KeyErrors))
	for k, v := range f.KeyErrors {
		keys[k] = v
	}
	f.KeyErrors = keys
	return f
}

// Stats returns a snapshot of the counters. Maps hold only non-zero entries.
func (s *Sim) Stats() Stats {
	c := &s.stats
	st := Stats{
		Requests:         c.requests.Load(),
		ByStatus:         map[int]int64{},
		Streams:          c.streams.Load(),
		StreamsCut:       c.streamsCut.Load(),
		ToolCalls:        map[string]int64{},
		InFlight:         c.inFlight.Load(),
		MaxInFlight:      c.maxInFlight.Load(),
		PromptTokens:     c.promptTokens.Load(),
		CompletionTokens: c.completionTokens.Load(),
		WithMaxTokens:    c.withMaxTokens.Load(),
		Truncated:        c.truncated.Load(),
		ByKey:            map[string]int64{},
	}
	c.byKeyMu.Lock()
	for k, n := range c.byKey {
		st.ByKey[k] = n
	}
	c.byKeyMu.Unlock()
	for status := range c.byStatus {
		if n := c.byStatus[status].Load(); n != 0 {
			st.ByStatus[status] = n
		}
	}
	for i, name := range llmToolNames {
		if n := c.toolCalls[i].Load(); n != 0 {
			st.ToolCalls[name] = n
		}
	}
	return st
}

// ResetStats zeroes the counters. InFlight is a gauge and stays; MaxInFlight
// restarts from it.
func (s *Sim) ResetStats() {
	c := &s.stats
	c.requests.Store(0)
	for i := range c.byStatus {
		c.byStatus[i].Store(0)
	}
	c.streams.Store(0)
	c.streamsCut.Store(0)
	for i := range c.toolCalls {
		c.toolCalls[i].Store(0)
	}
	c.promptTokens.Store(0)
	c.completionTokens.Store(0)
	c.withMaxTokens.Store(0)
	c.truncated.Store(0)
	c.byKeyMu.Lock()
	c.byKey = nil
	c.byKeyMu.Unlock()
	c.maxInFlight.Store(c.inFlight.Load())
}

func (s *Sim) handleModels(w http.ResponseWriter, _ *http.Request) {
	model := s.cfg.Load().faults.Model
	llmWriteJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": model, "object": "model", "created": 0, "owned_by": "peakdesk-llmsim",
		}},
	})
}

func (s *Sim) handleGetFaults(w http.ResponseWriter, _ *http.Request) {
	llmWriteJSON(w, http.StatusOK, s.Faults())
}

func (s *Sim) handlePutFaults(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		llmWriteError(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", "read body: "+err.Error())
		return
	}
	s.setMu.Lock()
	f := s.Faults()
	err = json.Unmarshal(body, &f)
	if err == nil {
		err = f.Validate()
	}
	if err == nil {
		s.setFaultsLocked(f)
	}
	s.setMu.Unlock()
	if err != nil {
		llmWriteError(w, http.StatusBadRequest, "invalid_request_error", "invalid_faults", err.Error())
		return
	}
	llmWriteJSON(w, http.StatusOK, s.Faults())
}

func (s *Sim) handleStats(w http.ResponseWriter, _ *http.Request) {
	llmWriteJSON(w, http.StatusOK, s.Stats())
}

func (s *Sim) handleReset(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	llmWriteJSON(w, http.StatusOK, s.Stats())
}

func llmWriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := llmMarshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// llmMarshal encodes v without escaping <, > and &, so raw bodies show text as sent.
func llmMarshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// llmErrorBody is the OpenAI error envelope.
type llmErrorBody struct {
	Error llmErrorDetail `json:"error"`
}

type llmErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func llmWriteError(w http.ResponseWriter, status int, typ, code, msg string) {
	llmWriteJSON(w, status, llmErrorBody{Error: llmErrorDetail{Message: msg, Type: typ, Code: code}})
}

// llmBucket is a token bucket; a zero rate means no limit. The balance may go
// negative (tokens taken on credit), which delays the next admission.
type llmBucket struct {
	rate   float64 // per second
	burst  float64
	tokens float64
	last   time.Time
}

func llmNewBucket(perMinute int, now time.Time) llmBucket {
	if perMinute <= 0 {
		return llmBucket{}
	}
	burst := max(math.Ceil(float64(perMinute)/60), 1)
	return llmBucket{rate: float64(perMinute) / 60, burst: burst, tokens: burst, last: now}
}

func (b *llmBucket) refill(now time.Time) {
	if b.rate == 0 {
		return
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(b.burst, b.tokens+elapsed.Seconds()*b.rate)
		b.last = now
	}
}

// wait is how long until one token is available; 0 when one is now.
func (b *llmBucket) wait() time.Duration {
	if b.rate == 0 || b.tokens >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - b.tokens) / b.rate * float64(time.Second)))
}

func (b *llmBucket) take(n float64) {
	if b.rate != 0 {
		b.tokens -= n
	}
}

// llmErrRequestLimit and llmErrTokenLimit tell which limit refused a request.
var (
	llmErrRequestLimit = errors.New("requests per minute")
	llmErrTokenLimit   = errors.New("tokens per minute")
)

// admit charges one request and its tokens to the limits, or says which limit
// is exhausted and when it admits again.
func (s *Sim) admit(tokens int) (time.Duration, error) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	now := s.now()
	s.reqLimit.refill(now)
	s.tokLimit.refill(now)
	if d := s.reqLimit.wait(); d > 0 {
		return d, llmErrRequestLimit
	}
	if d := s.tokLimit.wait(); d > 0 {
		return d, llmErrTokenLimit
	}
	s.reqLimit.take(1)
	s.tokLimit.take(float64(tokens))
	return 0, nil
}
