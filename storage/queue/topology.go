// Package queue is peakdesk's JetStream topology (docs/architecture.md): the
// streams CHAT_IN (accepted messages, one subject per priority and shop,
// and the edge's shed answers by shop on chat.shed.>; work-queue
// retention), CHAT_EVENTS (reply events, one subject per customer, for event
// streams and replay), CHAT_DLQ and CHAT_ADVISORIES, the workers' durable
// consumers, the embedded server dev mode and tests run, and the publishing
// of reply events.
package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
)

// JetStream topology (docs/architecture.md).
const (
	// StreamIn holds accepted chat messages until a worker answers them.
	StreamIn = "CHAT_IN"
	// StreamEvents holds reply events for SSE delivery and replay.
	StreamEvents = "CHAT_EVENTS"
	// StreamDLQ holds messages that used up their delivery attempts.
	StreamDLQ = "CHAT_DLQ"
	// StreamAdvisories keeps the server's max-deliveries advisories of
	// CHAT_IN until a worker has moved the message to CHAT_DLQ, so an
	// advisory published while no worker listens, or whose handler died, is
	// not lost (a core NATS subscription would lose it).
	StreamAdvisories = "CHAT_ADVISORIES"
	// ConsumerDeadLetters is the durable consumer of StreamAdvisories.
	ConsumerDeadLetters = "dead-letters"
)

// MaxDeliveriesAdvisories is the subject of the server's advisories for
// CHAT_IN messages that reached MaxDeliver, one token per consumer.
const MaxDeliveriesAdvisories = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamIn + ".*"

// DLQSubject is the CHAT_DLQ subject of shop's dead letters.
func DLQSubject(shop string) string { return "chat.dlq." + shop }

// InSubject is the subject a message of priority p for shop is published on.
func InSubject(p peakdesk.Priority, shop string) string {
	return "chat.in." + string(p) + "." + shop
}

// ConsumerName is the durable consumer the workers pull priority p from.
func ConsumerName(p peakdesk.Priority) string { return "workers-" + string(p) }

// Topology sizes the streams and consumers. Zero fields take the defaults.
type Topology struct {
	// Replicas per stream: 1 for a single server, 3 in a production cluster.
	Replicas int
	// MaxMessages bounds CHAT_IN; beyond it publishes fail (discard new) and
	// the edge answers 503 overloaded. Default 2,000,000.
	MaxMessages int64
	// MaxBytes bounds CHAT_IN. Default 2 GiB.
	MaxBytes int64
	// DuplicateWindow is CHAT_IN's idempotency window. Default 15 min.
	DuplicateWindow time.Duration
	// EventsMaxAge is how long reply events stay replayable. Default 24 h.
	EventsMaxAge time.Duration
	// AckWait is how long a worker may hold a p1 or p2 message without a
	// heartbeat before it is redelivered: how long the messages of a worker
	// that died wait. Workers send heartbeats every third of it. Default 8 s.
	AckWait time.Duration
	// AckWaitP0 is the same for p0 messages, at most AckWait: a dead
	// worker's urgent messages come back sooner. Default 3 s.
	AckWaitP0 time.Duration
	// MaxDeliver is the number of delivery attempts per message. Default 6.
	MaxDeliver int
}

func (t Topology) withDefaults() Topology {
	t.Replicas = max(t.Replicas, 1)
	if t.MaxMessages <= 0 {
		t.MaxMessages = 2_000_000
	}
	if t.MaxBytes <= 0 {
		t.MaxBytes = 2 << 30
	}
	if t.DuplicateWindow <= 0 {
		t.DuplicateWindow = 15 * time.Minute
	}
	if t.EventsMaxAge <= 0 {
		t.EventsMaxAge = 24 * time.Hour
	}
	if t.AckWait <= 0 {
		t.AckWait = 8 * time.Second
	}
	if t.AckWaitP0 <= 0 {
		t.AckWaitP0 = 3 * time.Second
	}
	t.AckWaitP0 = min(t.AckWaitP0, t.AckWait)
	if t.MaxDeliver <= 0 {
		t.MaxDeliver = 6
	}
	return t
}

// AckWaitOf is the AckWait of priority p's consumer.
func (t Topology) AckWaitOf(p peakdesk.Priority) time.Duration {
	if p == peakdesk.P0 {
		return t.AckWaitP0
	}
	return t.AckWait
}

// EnsureTopology creates or updates the streams and the worker consumers.
func EnsureTopology(ctx context.Context, js jetstream.JetStream, t Topology) (Topology, error) {
	t = t.withDefaults()
	streams := []jetstream.StreamConfig{{
		Name:        StreamIn,
		Description: "accepted chat messages, by priority and shop; shed answers, by shop",
		Subjects:    []string{"chat.in.>", "chat.shed.>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		MaxMsgs:     t.MaxMessages,
		MaxBytes:    t.MaxBytes,
		MaxMsgSize:  peakdesk.MaxBodyBytes + 16<<10,
		Discard:     jetstream.DiscardNew,
		Duplicates:  t.DuplicateWindow,
		// The edge may group concurrent publishes into atomic batches.
		AllowAtomicPublish: true,
	}, {
		Name:        StreamEvents,
		Description: "reply events, by shop and customer",
		Subjects:    []string{EventsFilter},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		MaxAge:      t.EventsMaxAge,
		Discard:     jetstream.DiscardOld,
		Duplicates:  2 * time.Minute,
		// Event streams replay a customer's subject with direct gets.
		AllowDirect: true,
	}, {
		Name:        StreamDLQ,
		Description: "messages that used up their delivery attempts",
		Subjects:    []string{"chat.dlq.>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		MaxAge:      14 * 24 * time.Hour,
		// A copy is published with a Nats-Msg-Id derived from its CHAT_IN
		// sequence, so an advisory handled twice leaves one copy.
		Duplicates: time.Hour,
	}, {
		Name:        StreamAdvisories,
		Description: "max-deliveries advisories of CHAT_IN, until moved to CHAT_DLQ",
		Subjects:    []string{MaxDeliveriesAdvisories},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		MaxAge:      14 * 24 * time.Hour,
	}}
	for _, cfg := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return t, fmt.Errorf("queue: stream %s: %w", cfg.Name, err)
		}
	}
	_, err := js.CreateOrUpdateConsumer(ctx, StreamAdvisories, jetstream.ConsumerConfig{
		Durable:       ConsumerDeadLetters,
		Description:   "workers moving dead letters to CHAT_DLQ",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1, // a dead letter is never dropped; failures retry with a delay
		MaxAckPending: 1000,
		Replicas:      t.Replicas,
	})
	if err != nil {
		return t, fmt.Errorf("queue: consumer %s: %w", ConsumerDeadLetters, err)
	}
	_, err = js.CreateOrUpdateConsumer(ctx, StreamIn, jetstream.ConsumerConfig{
		Durable:       ConsumerShedWriter,
		Description:   "the shed writer storing the edge's FAQ answers in batches",
		FilterSubject: "chat.shed.>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1, // an answer the customer has is never dropped; failures retry with a delay
		MaxAckPending: 20_000,
		Replicas:      t.Replicas,
	})
	if err != nil {
		return t, fmt.Errorf("queue: consumer %s: %w", ConsumerShedWriter, err)
	}
	for _, p := range peakdesk.Priorities {
		_, err := js.CreateOrUpdateConsumer(ctx, StreamIn, jetstream.ConsumerConfig{
			Durable:       ConsumerName(p),
			Description:   "workers pulling " + string(p) + " messages",
			FilterSubject: "chat.in." + string(p) + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       t.AckWaitOf(p),
			MaxDeliver:    t.MaxDeliver,
			MaxAckPending: 100_000,
			Replicas:      t.Replicas,
		})
		if err != nil {
			return t, fmt.Errorf("queue: consumer %s: %w", ConsumerName(p), err)
		}
	}
	return t, nil
}

// CheckTopology is EnsureTopology for a process whose NATS user may not
// create or change streams (deploy/k8s: the per-role users; `peakdesk
// migrate` creates the topology with the admin user): it only checks that
// the worker consumers exist, and returns t with the AckWait they were
// created with, which the workers' heartbeats must beat.
func CheckTopology(ctx context.Context, js jetstream.JetStream, t Topology) (Topology, error) {
	t = t.withDefaults()
	for i, p := range peakdesk.Priorities {
		c, err := js.Consumer(ctx, StreamIn, ConsumerName(p))
		if err != nil {
			return t, fmt.Errorf("queue: consumer %s of %s: %w (run peakdesk migrate with NATS_URL set first)",
				ConsumerName(p), StreamIn, err)
		}
		if i == 0 {
			t.AckWait = c.CachedInfo().Config.AckWait
		}
	}
	return t, nil
}

// NATSServerConfig configures the embedded NATS server.
type NATSServerConfig struct {
	// StoreDir is where JetStream keeps its files.
	StoreDir string
	// Host and Port to listen on; Port -1 picks a free port.
	Host string
	Port int
	// SyncAlways makes JetStream fsync every write before it acks.
	SyncAlways bool
}

// StartNATS starts an in-process NATS server with JetStream and waits until
// it accepts connections.
func StartNATS(cfg NATSServerConfig) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "peakdesk-embedded",
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		SyncAlways: cfg.SyncAlways,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("queue: nats server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("queue: nats server not ready in 10s")
	}
	return ns, nil
}
