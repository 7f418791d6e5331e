package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/egress"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// devSecret signs tokens in dev mode when PEAKDESK_JWT_SECRET is unset. It is
// public, so dev mode says so loudly and serve refuses to run without a secret.
const devSecret = "peakdesk-dev-secret-do-not-use-in-production"

// Roles a process can run.
const (
	roleIngest    = "ingest"
	roleWorker    = "worker"
	roleRelay     = "relay"
	roleDashboard = "dashboard"
)

var allRoles = []string{roleIngest, roleWorker, roleRelay, roleDashboard}

// Config is the whole configuration of a peakdesk process. Environment
// variables set the defaults; flags override them.
type Config struct {
	Dev   bool
	Roles []string

	DatabaseURL string
	RedisURL    string
	// NATSURL empty in dev starts an embedded server.
	NATSURL string
	// NATSCreds, NATSCA, NATSTLSCert and NATSTLSKey are the process's NATS
	// credentials file and TLS files (queue.ConnectConfig).
	NATSCreds, NATSCA, NATSTLSCert, NATSTLSKey string
	// NATSTopology is "ensure" (create or update the streams and
	// consumers at start) or "check" (only check they exist: for NATS users
	// that may not change them; `peakdesk migrate` creates them).
	NATSTopology string
	// NATSSyncAlways makes the embedded JetStream fsync before every ack.
	NATSSyncAlways bool
	// PublishBatch makes the edge group concurrent publishes into atomic
	// batches (group commit), for JetStream with sync_interval: always.
	PublishBatch bool
	HTTPAddr     string
	DataDir      string
	JWTSecret    string
	// JWTPreviousSecrets are earlier platform keys that still verify
	// tokens and ids after a rotation of JWTSecret.
	JWTPreviousSecrets []string
	// MasterKey seals the shops' secrets at rest (PEAKDESK_MASTER_KEY: 32
	// bytes as hex or base64); empty in dev = a fixed dev-only key.
	// MasterKeyPrevious are earlier master keys that still open what they
	// sealed (PEAKDESK_MASTER_KEY_PREVIOUS, comma-separated): a rotation.
	MasterKey         string
	MasterKeyPrevious []string
	// MetricsAddr is where /metrics (and /healthz) are served, apart from
	// the API; empty: nowhere.
	MetricsAddr string
	// Pprof serves Go's profiles (/debug/pprof/) beside /metrics on
	// MetricsAddr (PEAKDESK_PPROF; off by default).
	Pprof bool
	// MaxStreams caps the event streams one edge process holds open.
	MaxStreams int
	// MaxInFlight caps the requests one edge process handles at once (event
	// streams aside); FAQCacheTTL is how long the edge reuses an FAQ answer
	// to a shed question; ShedWriterBatch caps the shed answers the worker
	// role stores per transaction.
	MaxInFlight     int
	FAQCacheTTL     time.Duration
	ShedWriterBatch int

	// LLMBaseURL empty in dev starts the built-in simulated LLM.
	LLMBaseURL string
	LLMAPIKey  string
	LLMModel   string
	LLMTimeout time.Duration

	ShopAPIURL string
	// AllowPrivateShopURLs lets shop calls use plain http and reach
	// loopback and private addresses: dev and tests only (default on in
	// dev).
	AllowPrivateShopURLs bool

	WorkerConcurrency int
	// AckWait is the p1/p2 consumers' AckWait, AckWaitP0 the p0
	// consumer's (at most AckWait): how soon a dead worker's messages come
	// back.
	AckWait, AckWaitP0 time.Duration
	// SoftStop is how long a stopping relay lets attempts in flight finish;
	// WorkerSoftStop the same for a stopping worker's messages (default 0:
	// handed back at once).
	SoftStop, WorkerSoftStop time.Duration
	DBMaxConns               int
	LogLevel                 string
	// LogFormat is text, json, or auto: text on a terminal, JSON otherwise.
	LogFormat string

	// WorkerMinConcurrency is the floor of the adaptive limit; 0 = 1/8 of
	// WorkerConcurrency.
	WorkerMinConcurrency int
	// WorkerWeights shares the slots p0 leaves between p1 and p2, "p1:p2".
	WorkerWeights string
	// WorkerGather is how long a worker gathers a conversation's quick
	// successive messages before answering them together.
	WorkerGather time.Duration
	// CommitGroup is the most turns a worker stores in one transaction
	// (group commit): more per commit, more answers/s per Postgres core;
	// fewer, less wait for a reply behind the others of its group.
	CommitGroup int
	// LLMRPM and LLMTPM are the provider's limits for all workers together.
	LLMRPM, LLMTPM int
	// StreamReplicas is the JetStream replication of every stream (3 in a
	// production cluster).
	StreamReplicas int

	// RelayConcurrency is how many outbox actions one relay carries out at
	// once.
	RelayConcurrency int
	// Order answers: OrderCacheTTL is how long a shop lookup's result
	// answers further customers (coalesced across processes);
	// OrderLookupBudget bounds a lookup made while answering (the message's
	// deadline bounds it too); FollowUpStep and FollowUpMaxAttempts are the
	// order follow-ups' linear retry schedule, after which a human takes
	// over.
	OrderCacheTTL, OrderLookupBudget, FollowUpStep time.Duration
	FollowUpMaxAttempts                            int
	// LLMPrices is the price table, "model=in/out,…" in USD per million
	// tokens.
	LLMPrices string
	// FXRates converts the price table's dollars into shops' currencies for
	// their LLM spend caps, "CNY=7.2,…" in units per US dollar.
	FXRates string
	// LLMMaxTokensParam is the request field the completion limit goes in:
	// max_tokens or max_completion_tokens.
	LLMMaxTokensParam string

	// Migrate applies migrations at start (always in dev).
	Migrate bool
	// AdmissionDisabled turns the edge's load shedding off (benchmarks).
	AdmissionDisabled bool
	// AdmissionMaxWaitP0..P2 are the longest expected queueing per
	// priority before the edge sheds it; AdmissionMinBacklog the backlog
	// below which nothing is shed.
	AdmissionMaxWaitP0, AdmissionMaxWaitP1, AdmissionMaxWaitP2 time.Duration
	AdmissionMinBacklog                                        int

	// ConsoleOrigin is the operator console's public origin (an https one
	// makes its cookies Secure). ConsoleIdleTimeout and ConsoleLifetime end
	// sessions; ConsoleSampleInterval is how often the console samples the
	// desk for its live view and charts.
	ConsoleOrigin         string
	ConsoleIdleTimeout    time.Duration
	ConsoleLifetime       time.Duration
	ConsoleSampleInterval time.Duration
	// DevOrigins are web origins (comma-separated) whose pages may call
	// the chat API for every shop, beside each shop's allowed origins;
	// for development. StreamOpens and StreamOpenWait shape the edge's
	// event stream open queue (ingest.Config).
	DevOrigins     string
	StreamOpens    int
	StreamOpenWait time.Duration
	// SnapshotPrefix names the Redis keys of the metric snapshots every
	// process publishes for the console; empty = the default (tests set
	// their own so parallel tests do not see each other).
	SnapshotPrefix string

	// envErr is the first malformed environment variable, reported by
	// validate.
	envErr error
}

// envDefaults fills the configuration from the environment. A malformed
// value is kept in envErr, naming the variable, and stops the program at
// validate — never silently replaced by a default.
func envDefaults(getenv func(string) string, dev bool) Config {
	e := &envReader{getenv: getenv}
	c := Config{
		Dev:               dev,
		DatabaseURL:       e.str("DATABASE_URL", defaultDatabaseURL),
		RedisURL:          e.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
		NATSURL:           e.str("NATS_URL", ""),
		NATSSyncAlways:    e.bool("PEAKDESK_NATS_SYNC_ALWAYS", false),
		PublishBatch:      e.bool("PEAKDESK_PUBLISH_BATCH", false),
		HTTPAddr:          e.str("PEAKDESK_HTTP_ADDR", "127.0.0.1:8080"),
		DataDir:           e.str("PEAKDESK_DATA_DIR", ".peakdesk"),
		JWTSecret:         e.str("PEAKDESK_JWT_SECRET", ""),
		MetricsAddr:       e.str("PEAKDESK_METRICS_ADDR", "127.0.0.1:9090"),
		Pprof:             e.bool("PEAKDESK_PPROF", false),
		MaxStreams:        e.int("PEAKDESK_MAX_STREAMS", 10_000),
		LLMBaseURL:        e.str("PEAKDESK_LLM_BASE_URL", ""),
		LLMAPIKey:         e.str("PEAKDESK_LLM_API_KEY", ""),
		LLMModel:          e.str("PEAKDESK_LLM_MODEL", "peakdesk-sim"),
		LLMTimeout:        e.duration("PEAKDESK_LLM_TIMEOUT", 30*time.Second),
		ShopAPIURL:        e.str("PEAKDESK_SHOP_API_URL", ""),
		WorkerConcurrency: e.int("PEAKDESK_WORKER_CONCURRENCY", 64),
		AckWait:           e.duration("PEAKDESK_ACK_WAIT", 8*time.Second),
		AckWaitP0:         e.duration("PEAKDESK_ACK_WAIT_P0", 3*time.Second),
		SoftStop:          e.duration("PEAKDESK_SOFT_STOP", 10*time.Second),
		WorkerSoftStop:    e.duration("PEAKDESK_WORKER_SOFT_STOP", 0),
		DBMaxConns:        e.int("PEAKDESK_DB_MAX_CONNS", 20),
		LogLevel:          e.str("PEAKDESK_LOG_LEVEL", "info"),
		LogFormat:         e.str("PEAKDESK_LOG_FORMAT", "auto"),
		Roles:             splitRoles(e.str("PEAKDESK_ROLES", strings.Join(allRoles, ","))),
	}
	// Worker scheduling, turns and the provider budget.
	c.WorkerMinConcurrency = e.int("PEAKDESK_WORKER_MIN_CONCURRENCY", 0)
	c.WorkerWeights = e.str("PEAKDESK_WORKER_WEIGHTS", "4:1")
	c.WorkerGather = e.duration("PEAKDESK_WORKER_GATHER", 50*time.Millisecond)
	c.CommitGroup = e.int("PEAKDESK_COMMIT_GROUP", 4)
	c.LLMRPM = e.int("PEAKDESK_LLM_RPM", 0)
	c.LLMTPM = e.int("PEAKDESK_LLM_TPM", 0)
	c.StreamReplicas = e.int("PEAKDESK_STREAM_REPLICAS", 1)
	c.RelayConcurrency = e.int("PEAKDESK_RELAY_CONCURRENCY", 32)
	c.OrderCacheTTL = e.duration("PEAKDESK_ORDER_CACHE_TTL", 30*time.Second)
	c.OrderLookupBudget = e.duration("PEAKDESK_ORDER_LOOKUP_BUDGET", 2*time.Second)
	c.FollowUpStep = e.duration("PEAKDESK_FOLLOWUP_STEP", 5*time.Second)
	c.FollowUpMaxAttempts = e.int("PEAKDESK_FOLLOWUP_MAX_ATTEMPTS", outbox.DefaultFollowUpMaxAttempts)
	c.LLMPrices = e.str("PEAKDESK_LLM_PRICES", "")
	c.FXRates = e.str("PEAKDESK_FX_RATES", llm.DefaultFXRates)
	c.LLMMaxTokensParam = e.str("PEAKDESK_LLM_MAX_TOKENS_PARAM", llm.ParamMaxTokens)
	// Outbound safety: dev's shops (the simulator) live on loopback.
	// NATS credentials and TLS (deploy/k8s/nats/auth.conf: a user per role).
	c.NATSCreds = e.str("NATS_CREDS", "")
	c.NATSCA = e.str("NATS_CA", "")
	c.NATSTLSCert = e.str("NATS_TLS_CERT", "")
	c.NATSTLSKey = e.str("NATS_TLS_KEY", "")
	c.NATSTopology = e.str("PEAKDESK_NATS_TOPOLOGY", topologyEnsure)
	c.AllowPrivateShopURLs = e.bool("PEAKDESK_ALLOW_PRIVATE_SHOP_URLS", dev)
	c.JWTPreviousSecrets = splitSecrets(e.str("PEAKDESK_JWT_PREVIOUS_SECRETS", ""))
	c.MasterKey = e.str("PEAKDESK_MASTER_KEY", "")
	c.MasterKeyPrevious = splitSecrets(e.str("PEAKDESK_MASTER_KEY_PREVIOUS", ""))
	// Admission control: when the edge starts shedding.
	c.AdmissionMaxWaitP0 = e.duration("PEAKDESK_ADMISSION_MAX_WAIT_P0", 5*time.Minute)
	c.AdmissionMaxWaitP1 = e.duration("PEAKDESK_ADMISSION_MAX_WAIT_P1", 2*time.Minute)
	c.AdmissionMaxWaitP2 = e.duration("PEAKDESK_ADMISSION_MAX_WAIT_P2", 30*time.Second)
	c.AdmissionMinBacklog = e.int("PEAKDESK_ADMISSION_MIN_BACKLOG", 2000)
	c.AdmissionDisabled = e.bool("PEAKDESK_ADMISSION_DISABLED", false)
	// Shedding at the speed of accepting: the edge's bounds and the writer.
	c.MaxInFlight = e.int("PEAKDESK_MAX_INFLIGHT", 4096)
	c.FAQCacheTTL = e.duration("PEAKDESK_SHED_FAQ_CACHE_TTL", 2*time.Second)
	c.ShedWriterBatch = e.int("PEAKDESK_SHED_WRITER_BATCH", 500)
	c.ConsoleOrigin = e.str("PEAKDESK_CONSOLE_ORIGIN", "")
	c.ConsoleIdleTimeout = e.duration("PEAKDESK_CONSOLE_IDLE_TIMEOUT", 30*time.Minute)
	c.ConsoleLifetime = e.duration("PEAKDESK_CONSOLE_LIFETIME", 12*time.Hour)
	c.ConsoleSampleInterval = e.duration("PEAKDESK_CONSOLE_SAMPLE_INTERVAL", 5*time.Second)
	c.DevOrigins = e.str("PEAKDESK_DEV_ORIGINS", "")
	c.StreamOpens = e.int("PEAKDESK_STREAM_OPENS", 64)
	c.StreamOpenWait = e.duration("PEAKDESK_STREAM_OPEN_WAIT", 10*time.Second)
	c.envErr = e.err
	return c
}

// devOrigins returns DevOrigins normalized, or an error naming the setting.
func (c *Config) devOrigins() ([]string, error) {
	var out []string
	for o := range strings.SplitSeq(c.DevOrigins, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		n, err := peakdesk.NormalizeOrigin(o)
		if err != nil {
			return nil, fmt.Errorf("config: PEAKDESK_DEV_ORIGINS: %q is not a web origin like http://localhost:3000", o)
		}
		out = append(out, n)
	}
	return out, nil
}

// envReader reads typed environment variables, keeping the first malformed
// one as an error that names it.
type envReader struct {
	getenv func(string) string
	err    error
}

func (e *envReader) str(name, def string) string { return cmp.Or(e.getenv(name), def) }

func (e *envReader) fail(name, want, got string) {
	if e.err == nil {
		e.err = fmt.Errorf("config: %s: want %s, got %q", name, want, got)
	}
}

func (e *envReader) int(name string, def int) int {
	v := strings.TrimSpace(e.getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.fail(name, "a whole number", v)
		return def
	}
	return n
}

func (e *envReader) duration(name string, def time.Duration) time.Duration {
	v := strings.TrimSpace(e.getenv(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.fail(name, "a duration like 30s or 2m", v)
		return def
	}
	return d
}

func (e *envReader) bool(name string, def bool) bool {
	v := strings.TrimSpace(e.getenv(name))
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.fail(name, "true or false", v)
		return def
	}
	return b
}

// splitSecrets splits a comma-separated list of secrets.
func splitSecrets(s string) []string {
	var out []string
	for sec := range strings.SplitSeq(s, ",") {
		if sec = strings.TrimSpace(sec); sec != "" {
			out = append(out, sec)
		}
	}
	return out
}

func splitRoles(s string) []string {
	var roles []string
	for r := range strings.SplitSeq(s, ",") {
		if r = strings.TrimSpace(r); r != "" {
			roles = append(roles, r)
		}
	}
	return roles
}

// parseFlags returns the configuration: environment first, then flags.
func parseFlags(name string, args []string, stderr io.Writer, getenv func(string) string, dev bool) (Config, error) {
	c := envDefaults(getenv, dev)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	roles := strings.Join(c.Roles, ",")
	if !dev {
		fs.StringVar(&roles, "roles", roles, "comma-separated roles to run: "+strings.Join(allRoles, ", ")+" (env PEAKDESK_ROLES)")
	}
	fs.Var(secretURL{&c.DatabaseURL}, "database-url", "Postgres `URL` (env DATABASE_URL)")
	fs.Var(secretURL{&c.RedisURL}, "redis-url", "Redis `URL` (env REDIS_URL)")
	fs.StringVar(&c.NATSURL, "nats-url", c.NATSURL, modeHelp(dev, "NATS URL; empty = an embedded server (env NATS_URL)", "NATS URL (required) (env NATS_URL)"))
	fs.StringVar(&c.NATSCreds, "nats-creds", c.NATSCreds, "NATS credentials `file`: .creds (user JWT + seed) or nkey seed (env NATS_CREDS)")
	fs.StringVar(&c.NATSCA, "nats-ca", c.NATSCA, "PEM `file` of the CAs of the NATS servers' certificates; requires TLS (env NATS_CA)")
	fs.StringVar(&c.NATSTopology, "nats-topology", c.NATSTopology, "ensure: create/update streams and consumers at start; check: only check they exist (env PEAKDESK_NATS_TOPOLOGY)")
	fs.BoolVar(&c.NATSSyncAlways, "nats-sync-always", c.NATSSyncAlways, "the embedded JetStream fsyncs before every ack (env PEAKDESK_NATS_SYNC_ALWAYS)")
	fs.BoolVar(&c.PublishBatch, "publish-batch", c.PublishBatch, "group concurrent publishes into atomic batches; use with fsync-always JetStream (env PEAKDESK_PUBLISH_BATCH)")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "HTTP listen address (env PEAKDESK_HTTP_ADDR)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "listen address of /metrics, apart from the API; empty: none (env PEAKDESK_METRICS_ADDR)")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "also serve Go's profiles at /debug/pprof/ on the metrics address (env PEAKDESK_PPROF)")
	fs.IntVar(&c.MaxStreams, "max-streams", c.MaxStreams, "event streams one edge process holds open at most (env PEAKDESK_MAX_STREAMS)")
	fs.IntVar(&c.MaxInFlight, "max-inflight", c.MaxInFlight, "requests one edge process handles at once; more are answered 503 (env PEAKDESK_MAX_INFLIGHT)")
	fs.IntVar(&c.ShedWriterBatch, "shed-writer-batch", c.ShedWriterBatch, "shed answers the worker role stores per transaction (env PEAKDESK_SHED_WRITER_BATCH)")
	fs.IntVar(&c.StreamOpens, "stream-opens", c.StreamOpens, "event stream opens set up at once; more wait their turn (env PEAKDESK_STREAM_OPENS)")
	fs.DurationVar(&c.StreamOpenWait, "stream-open-wait", c.StreamOpenWait, "how long an event stream open may wait for its turn before 503 (env PEAKDESK_STREAM_OPEN_WAIT)")
	fs.StringVar(&c.DevOrigins, "dev-origins", c.DevOrigins, "comma-separated web origins whose pages may call the chat API for every shop, e.g. http://localhost:3000 (env PEAKDESK_DEV_ORIGINS)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "local data directory: the embedded NATS store, the dev console login (env PEAKDESK_DATA_DIR)")
	fs.StringVar(&c.LLMBaseURL, "llm-base-url", c.LLMBaseURL, modeHelp(dev, "OpenAI-compatible base URL; empty = the built-in simulator (env PEAKDESK_LLM_BASE_URL)", "OpenAI-compatible base URL of the LLM provider (required by the worker role) (env PEAKDESK_LLM_BASE_URL)"))
	fs.StringVar(&c.LLMModel, "llm-model", c.LLMModel, "LLM model (env PEAKDESK_LLM_MODEL)")
	fs.DurationVar(&c.LLMTimeout, "llm-timeout", c.LLMTimeout, "timeout of one LLM call (env PEAKDESK_LLM_TIMEOUT)")
	fs.IntVar(&c.WorkerConcurrency, "worker-concurrency", c.WorkerConcurrency, "messages one worker process answers at once (env PEAKDESK_WORKER_CONCURRENCY)")
	fs.IntVar(&c.WorkerMinConcurrency, "worker-min-concurrency", c.WorkerMinConcurrency, "floor of the adaptive concurrency limit; 0 = 1/8 of --worker-concurrency (env PEAKDESK_WORKER_MIN_CONCURRENCY)")
	fs.StringVar(&c.WorkerWeights, "worker-weights", c.WorkerWeights, "p1:p2 share of the slots p0 leaves when both are backlogged (env PEAKDESK_WORKER_WEIGHTS)")
	fs.IntVar(&c.CommitGroup, "commit-group", c.CommitGroup, "most turns a worker stores in one Postgres transaction, 1..60 (env PEAKDESK_COMMIT_GROUP)")
	fs.DurationVar(&c.WorkerGather, "worker-gather", c.WorkerGather, "how long a worker gathers a conversation's quick successive messages to answer them together (env PEAKDESK_WORKER_GATHER)")
	fs.IntVar(&c.LLMRPM, "llm-rpm", c.LLMRPM, "LLM provider requests per minute for all workers together; 0 = unlimited (env PEAKDESK_LLM_RPM)")
	fs.IntVar(&c.LLMTPM, "llm-tpm", c.LLMTPM, "LLM provider tokens per minute for all workers together; 0 = unlimited (env PEAKDESK_LLM_TPM)")
	fs.IntVar(&c.RelayConcurrency, "relay-concurrency", c.RelayConcurrency, "outbox actions one relay carries out at once (env PEAKDESK_RELAY_CONCURRENCY)")
	fs.DurationVar(&c.OrderCacheTTL, "order-cache-ttl", c.OrderCacheTTL, "how long a shop lookup's result answers further customers (env PEAKDESK_ORDER_CACHE_TTL)")
	fs.DurationVar(&c.OrderLookupBudget, "order-lookup-budget", c.OrderLookupBudget, "longest a shop lookup may take while answering before the customer is told \"checking\" and followed up (env PEAKDESK_ORDER_LOOKUP_BUDGET)")
	fs.DurationVar(&c.FollowUpStep, "followup-step", c.FollowUpStep, "step of the order follow-ups' linear backoff (env PEAKDESK_FOLLOWUP_STEP)")
	fs.IntVar(&c.FollowUpMaxAttempts, "followup-max-attempts", c.FollowUpMaxAttempts, "attempts of an order follow-up before a human takes over (env PEAKDESK_FOLLOWUP_MAX_ATTEMPTS)")
	fs.StringVar(&c.ShopAPIURL, "shop-api-url", c.ShopAPIURL, modeHelp(dev, "default shop API base URL; empty = the built-in simulator (env PEAKDESK_SHOP_API_URL)", "default shop API base URL (required by the worker and relay roles) (env PEAKDESK_SHOP_API_URL)"))
	fs.BoolVar(&c.AllowPrivateShopURLs, "allow-private-shop-urls", c.AllowPrivateShopURLs, modeHelp(dev, "let shop calls use plain http and reach loopback/private addresses; on by default here (env PEAKDESK_ALLOW_PRIVATE_SHOP_URLS)", "let shop calls use plain http and reach loopback/private addresses; for tests only (env PEAKDESK_ALLOW_PRIVATE_SHOP_URLS)"))
	fs.IntVar(&c.StreamReplicas, "stream-replicas", c.StreamReplicas, "JetStream replicas per stream: 1, or 3 in a cluster (env PEAKDESK_STREAM_REPLICAS)")
	fs.DurationVar(&c.AckWait, "ack-wait", c.AckWait, "JetStream AckWait of the p1 and p2 worker consumers: how soon a dead worker's messages come back (env PEAKDESK_ACK_WAIT)")
	fs.DurationVar(&c.AckWaitP0, "ack-wait-p0", c.AckWaitP0, "JetStream AckWait of the p0 worker consumer, at most --ack-wait (env PEAKDESK_ACK_WAIT_P0)")
	fs.DurationVar(&c.SoftStop, "soft-stop", c.SoftStop, "how long a stopping relay lets outbox attempts in flight finish (env PEAKDESK_SOFT_STOP)")
	fs.DurationVar(&c.WorkerSoftStop, "worker-soft-stop", c.WorkerSoftStop, "how long a stopping worker lets in-flight messages finish before it hands them back; 0 = at once (env PEAKDESK_WORKER_SOFT_STOP)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error (env PEAKDESK_LOG_LEVEL)")
	fs.StringVar(&c.ConsoleOrigin, "console-origin", c.ConsoleOrigin, "the operator console's public origin, e.g. https://console.example.com; https makes its cookies Secure (env PEAKDESK_CONSOLE_ORIGIN)")
	fs.DurationVar(&c.ConsoleIdleTimeout, "console-idle-timeout", c.ConsoleIdleTimeout, "console sessions end after this long without use (env PEAKDESK_CONSOLE_IDLE_TIMEOUT)")
	fs.DurationVar(&c.ConsoleLifetime, "console-lifetime", c.ConsoleLifetime, "console sessions end this long after login (env PEAKDESK_CONSOLE_LIFETIME)")
	fs.DurationVar(&c.ConsoleSampleInterval, "console-sample-interval", c.ConsoleSampleInterval, "how often the console samples the desk for its live view and charts (env PEAKDESK_CONSOLE_SAMPLE_INTERVAL)")
	fs.BoolVar(&c.Migrate, "migrate", c.Migrate || dev, "apply database migrations at start")
	// serve's help shows what production needs: the embedded server's
	// settings are dev's (still accepted, so scripts keep working).
	hidden := []string{}
	if !dev {
		hidden = []string{"data-dir", "nats-sync-always"}
	}
	setUsage(fs, name, envOnlyText(dev), hidden...)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))
	}
	c.Roles = splitRoles(roles)
	return c, c.validate()
}

// modeHelp is a flag's help in dev or in serve, which differ in defaults
// and in what is required.
func modeHelp(dev bool, devText, serveText string) string {
	if dev {
		return devText
	}
	return serveText
}

func (c *Config) validate() error {
	if c.envErr != nil {
		return c.envErr
	}
	if len(c.Roles) == 0 {
		return errors.New("config: --roles: name at least one role")
	}
	if _, err := c.devOrigins(); err != nil {
		return err
	}
	if c.StreamOpens < 1 || c.StreamOpenWait <= 0 {
		return errors.New("config: PEAKDESK_STREAM_OPENS and PEAKDESK_STREAM_OPEN_WAIT must be positive")
	}
	for _, r := range c.Roles {
		if !slices.Contains(allRoles, r) {
			return fmt.Errorf("config: --roles: unknown role %q (have %s)", r, strings.Join(allRoles, ", "))
		}
	}
	if !c.Dev {
		switch {
		case c.JWTSecret == "":
			return errors.New("config: PEAKDESK_JWT_SECRET is required by serve")
		case len(c.JWTSecret) < 32:
			return errors.New("config: PEAKDESK_JWT_SECRET must be at least 32 bytes")
		case slices.ContainsFunc(c.JWTPreviousSecrets, func(s string) bool { return len(s) < 32 }):
			return errors.New("config: PEAKDESK_JWT_PREVIOUS_SECRETS: each secret must be at least 32 bytes")
		case c.NATSURL == "":
			return errors.New("config: NATS_URL is required by serve")
		case c.LLMBaseURL == "" && c.hasRole(roleWorker):
			return errors.New("config: PEAKDESK_LLM_BASE_URL is required by the worker role")
		case c.ShopAPIURL == "" && (c.hasRole(roleRelay) || c.hasRole(roleWorker)):
			return errors.New("config: PEAKDESK_SHOP_API_URL is required by the worker and relay roles")
		}
	}
	if c.WorkerConcurrency < 1 {
		return errors.New("config: --worker-concurrency must be at least 1")
	}
	if c.CommitGroup < 1 || c.CommitGroup > 60 {
		return errors.New("config: --commit-group (PEAKDESK_COMMIT_GROUP) must be 1 to 60")
	}
	if c.AckWait < 0 || c.AckWaitP0 < 0 || c.WorkerSoftStop < 0 {
		return errors.New("config: PEAKDESK_ACK_WAIT, PEAKDESK_ACK_WAIT_P0 and PEAKDESK_WORKER_SOFT_STOP must not be negative")
	}
	if c.WorkerMinConcurrency < 0 || c.WorkerMinConcurrency > c.WorkerConcurrency {
		return errors.New("config: --worker-min-concurrency must be within 0..--worker-concurrency")
	}
	if _, _, err := c.workerWeights(); err != nil {
		return err
	}
	if c.LLMRPM < 0 || c.LLMTPM < 0 {
		return errors.New("config: --llm-rpm and --llm-tpm must not be negative")
	}
	if _, err := llm.ParsePrices(c.LLMPrices); err != nil {
		return fmt.Errorf("config: PEAKDESK_LLM_PRICES: %w", err)
	}
	if _, err := llm.ParseFXRates(c.FXRates); err != nil {
		return fmt.Errorf("config: PEAKDESK_FX_RATES: %w", err)
	}
	if !llm.ValidMaxTokensParam(c.LLMMaxTokensParam) {
		return fmt.Errorf("config: PEAKDESK_LLM_MAX_TOKENS_PARAM: want %s or %s, got %q",
			llm.ParamMaxTokens, llm.ParamMaxCompletionTokens, c.LLMMaxTokensParam)
	}
	if c.MaxStreams < 1 {
		return errors.New("config: --max-streams must be at least 1")
	}
	if c.MaxInFlight < 1 {
		return errors.New("config: --max-inflight (PEAKDESK_MAX_INFLIGHT) must be at least 1")
	}
	if c.FAQCacheTTL <= 0 {
		return errors.New("config: PEAKDESK_SHED_FAQ_CACHE_TTL must be positive")
	}
	if c.ShedWriterBatch < 1 {
		return errors.New("config: --shed-writer-batch (PEAKDESK_SHED_WRITER_BATCH) must be at least 1")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("config: --log-level (PEAKDESK_LOG_LEVEL): want debug, info, warn or error, got %q", c.LogLevel)
	}
	if !slices.Contains([]string{"auto", "text", "json"}, c.LogFormat) {
		return fmt.Errorf("config: PEAKDESK_LOG_FORMAT: want auto, text or json, got %q", c.LogFormat)
	}
	if c.AdmissionMaxWaitP0 <= 0 || c.AdmissionMaxWaitP1 <= 0 || c.AdmissionMaxWaitP2 <= 0 {
		return errors.New("config: PEAKDESK_ADMISSION_MAX_WAIT_P0..P2 must be positive")
	}
	if c.AdmissionMinBacklog < 1 {
		return errors.New("config: PEAKDESK_ADMISSION_MIN_BACKLOG must be at least 1")
	}
	if _, err := masterKeys(c.MasterKey, c.MasterKeyPrevious); err != nil {
		return err
	}
	if c.RelayConcurrency < 1 {
		return errors.New("config: --relay-concurrency must be at least 1")
	}
	if c.OrderCacheTTL <= 0 || c.OrderLookupBudget <= 0 || c.FollowUpStep <= 0 || c.FollowUpMaxAttempts < 1 {
		return errors.New("config: PEAKDESK_ORDER_CACHE_TTL, PEAKDESK_ORDER_LOOKUP_BUDGET and PEAKDESK_FOLLOWUP_STEP must be positive and PEAKDESK_FOLLOWUP_MAX_ATTEMPTS at least 1")
	}
	if c.ShopAPIURL != "" {
		if err := egress.CheckURL(c.ShopAPIURL, c.AllowPrivateShopURLs); err != nil {
			return fmt.Errorf("config: PEAKDESK_SHOP_API_URL: %w", err)
		}
	}
	if c.ConsoleIdleTimeout < time.Second || c.ConsoleLifetime < c.ConsoleIdleTimeout {
		return errors.New("config: --console-idle-timeout must be at least 1s and --console-lifetime at least as long")
	}
	if c.ConsoleSampleInterval < 100*time.Millisecond {
		return errors.New("config: --console-sample-interval must be at least 100ms")
	}
	if c.NATSTopology != topologyEnsure && c.NATSTopology != topologyCheck {
		return fmt.Errorf("config: PEAKDESK_NATS_TOPOLOGY: want %s or %s, got %q", topologyEnsure, topologyCheck, c.NATSTopology)
	}
	if c.NATSURL != "" {
		if err := c.natsConnect("").Validate(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if c.StreamReplicas != 1 && c.StreamReplicas != 3 && c.StreamReplicas != 5 {
		return errors.New("config: --stream-replicas must be 1, 3 or 5")
	}
	return nil
}

func (c *Config) hasRole(r string) bool { return slices.Contains(c.Roles, r) }

// Values of PEAKDESK_NATS_TOPOLOGY.
const (
	topologyEnsure = "ensure"
	topologyCheck  = "check"
)

// natsConnect is how this process reaches NATS. inbox overrides the reply
// prefix its roles give (migrate uses the admin user's).
func (c *Config) natsConnect(inbox string) queue.ConnectConfig {
	return queue.ConnectConfig{
		URL: c.NATSURL, Name: "peakdesk " + strings.Join(c.Roles, ","),
		Creds: c.NATSCreds, CA: c.NATSCA, Cert: c.NATSTLSCert, Key: c.NATSTLSKey,
		InboxPrefix: cmp.Or(inbox, queue.InboxPrefix(c.Roles...)),
	}
}

// workerWeights parses WorkerWeights, "p1:p2" (e.g. "4:1").
func (c *Config) workerWeights() (p1, p2 int, err error) {
	a, b, ok := strings.Cut(c.WorkerWeights, ":")
	p1, err1 := strconv.Atoi(strings.TrimSpace(a))
	p2, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || p1 < 1 || p2 < 1 {
		return 0, 0, fmt.Errorf("config: --worker-weights: want p1:p2 with whole numbers ≥ 1, like 4:1, got %q", c.WorkerWeights)
	}
	return p1, p2, nil
}

// defaultDatabaseURL is the local database `make run` and the tests use.
const defaultDatabaseURL = "postgres://peakdesk:peakdesk@127.0.0.1:5432/peakdesk?sslmode=disable"

// secretURL is a flag.Value for a URL that may hold a password: help texts
// and errors show it with the password redacted.
type secretURL struct{ p *string }

func (u secretURL) String() string {
	if u.p == nil || *u.p == "" {
		return ""
	}
	parsed, err := url.Parse(*u.p)
	if err != nil {
		return "(unparseable URL)"
	}
	return parsed.Redacted()
}

func (u secretURL) Set(s string) error { *u.p = s; return nil }

// databaseURLFlag defines --database-url on fs with DATABASE_URL (else the
// local dev database) as its default, shown without the password.
func databaseURLFlag(fs *flag.FlagSet, getenv func(string) string, usage string) *string {
	v := cmp.Or(getenv("DATABASE_URL"), defaultDatabaseURL)
	fs.Var(secretURL{&v}, "database-url", usage)
	return &v
}
