package queue_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// SecureCluster is a 3-node cluster with deploy/k8s/nats/auth.conf's users
// and TLS, R3 topology made by the admin user, and a seed file per role.
type SecureCluster struct {
	*storagetest.NATSCluster
	creds map[string]string // role → seed file
}

var roles = []string{"ingest", "worker", "relay", "dashboard", "admin"}

func secureCluster(t *testing.T) *SecureCluster {
	t.Helper()
	env, creds := storagetest.NATSUsers(t, roles...)
	c := storagetest.StartNATSCluster(t, storagetest.NATSClusterConfig{
		Include: "../../deploy/k8s/nats/auth.conf", Env: env, TLS: true})
	sc := &SecureCluster{NATSCluster: c, creds: creds}
	js, _ := sc.connect(t, "admin")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := queue.EnsureTopology(ctx, js, queue.Topology{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	return sc
}

// violations collects the permission violations the server reports to one
// connection.
type violations struct {
	mu   sync.Mutex
	seen []string
}

func (v *violations) has(subject string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, s := range v.seen {
		if strings.Contains(s, `"`+subject) { // a prefix: consumer names follow

			return true
		}
	}
	return false
}

func (sc *SecureCluster) connect(t *testing.T, role string) (jetstream.JetStream, *violations) {
	t.Helper()
	v := &violations{}
	nc, err := queue.Connect(queue.ConnectConfig{URL: sc.URL(), Name: "test " + role, Creds: sc.creds[role],
		CA: sc.CAFile, InboxPrefix: queue.InboxPrefix(role)},
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				v.mu.Lock()
				v.seen = append(v.seen, err.Error())
				v.mu.Unlock()
			}
		}))
	if err != nil {
		t.Fatalf("%s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js, v
}

// refused runs op and checks that the server refused subject to this
// user: op fails, and the server reports the violation.
func refused(t *testing.T, who string, v *violations, subject string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	err := op(ctx)
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for !v.has(subject) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err == nil || !v.has(subject) {
		t.Errorf("%s: %s was not refused (err %v, violations %v)", who, subject, err, v.seen)
	}
}

// allowed runs op and checks that it succeeds. "No responders" (a publish
// reports it as no response from the stream, once its own retries are
// spent) is a stream or consumer leader moving in the fresh R3 cluster,
// not a refusal: a refused request is dropped by the server and times out.
// So op is tried again, until the deadline.
func allowed(t *testing.T, who, what string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := op(ctx)
	for errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		select {
		case <-ctx.Done():
			t.Errorf("%s: %s refused: %v (until the deadline)", who, what, err)
			return
		case <-time.After(50 * time.Millisecond):
		}
		err = op(ctx)
	}
	if err != nil {
		t.Errorf("%s: %s refused: %v", who, what, err)
	}
}

func publish(js jetstream.JetStream, subject string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := js.Publish(ctx, subject, []byte(`{}`))
		return err
	}
}

func pull(js jetstream.JetStream, stream, consumer string) func(context.Context) error {
	return func(ctx context.Context) error {
		c, err := js.Consumer(ctx, stream, consumer)
		if err != nil {
			return err
		}
		b, err := c.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		n := 0
		for m := range b.Messages() {
			n++
			_ = m.Nak()
		}
		if n == 0 {
			return errors.Join(errors.New("no message pulled"), b.Error())
		}
		return nil
	}
}

func subscribe(js jetstream.JetStream, subject string) func(context.Context) error {
	return func(context.Context) error {
		sub, err := js.Conn().SubscribeSync(subject)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		_, err = sub.NextMsg(time.Second)
		return err
	}
}

// Each role's NATS user (deploy/k8s/nats/auth.conf) is refused what its
// role must not do, over TLS on a 3-node cluster: a worker cannot publish a
// customer message or a shed answer, the edge cannot pull or read CHAT_IN, only the edge
// reads reply events, no role but admin changes streams, and no one reads
// another role's inbox. What each role needs, it may.
func TestEachRoleIsRefusedWhatItMustNotDo(t *testing.T) {
	sc := secureCluster(t)
	in := queue.InSubject(peakdesk.P0, "demo")
	p0 := queue.ConsumerName(peakdesk.P0)
	ingest, vIngest := sc.connect(t, "ingest")
	worker, vWorker := sc.connect(t, "worker")
	relay, vRelay := sc.connect(t, "relay")
	dash, vDash := sc.connect(t, "dashboard")

	// What each needs.
	allowed(t, "ingest", "publish "+in, publish(ingest, in))
	allowed(t, "ingest", "publish reply events", publish(ingest, queue.UserEventSubject("demo", "u1")))
	allowed(t, "ingest", "read reply events", func(ctx context.Context) error {
		s, err := ingest.Stream(ctx, queue.StreamEvents)
		if err != nil {
			return err
		}
		_, err = s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(queue.UserEventSubject("demo", "u1")))
		return err
	})
	allowed(t, "ingest", "follow reply events", func(ctx context.Context) error {
		c, err := ingest.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"chat.events.>"}})
		if err != nil {
			return err
		}
		_, err = c.Next(jetstream.FetchMaxWait(2 * time.Second))
		return err
	})
	for role, js := range map[string]jetstream.JetStream{"ingest": ingest, "worker": worker, "relay": relay, "dashboard": dash} {
		allowed(t, role, "check the topology", func(ctx context.Context) error {
			_, err := queue.CheckTopology(ctx, js, queue.Topology{})
			return err
		})
	}
	allowed(t, "worker", "pull "+p0, pull(worker, queue.StreamIn, p0))
	// Shed FAQ answers: the edge publishes them to CHAT_IN, the worker
	// role's shed writer pulls them.
	shed := queue.ShedSubject("demo")
	allowed(t, "ingest", "publish "+shed, publish(ingest, shed))
	allowed(t, "worker", "pull "+queue.ConsumerShedWriter, pull(worker, queue.StreamIn, queue.ConsumerShedWriter))
	allowed(t, "worker", "publish reply events", publish(worker, queue.UserEventSubject("demo", "u2")))
	allowed(t, "relay", "publish reply events", publish(relay, queue.LegacyEventSubject("demo", "c3")))
	allowed(t, "dashboard", "re-drive into "+in, publish(dash, in))
	allowed(t, "dashboard", "publish an agent's reply event", publish(dash, queue.UserEventSubject("demo", "u3")))

	// What each must not do.
	refused(t, "worker", vWorker, in, publish(worker, in))
	refused(t, "worker", vWorker, shed, publish(worker, shed))
	refused(t, "ingest", vIngest, "$JS.API.CONSUMER.MSG.NEXT.CHAT_IN."+queue.ConsumerShedWriter,
		pull(ingest, queue.StreamIn, queue.ConsumerShedWriter))
	refused(t, "relay", vRelay, in, publish(relay, in))
	refused(t, "ingest", vIngest, "$JS.API.CONSUMER.MSG.NEXT.CHAT_IN."+p0, pull(ingest, queue.StreamIn, p0))
	refused(t, "dashboard", vDash, "$JS.API.CONSUMER.MSG.NEXT.CHAT_IN."+p0, pull(dash, queue.StreamIn, p0))
	refused(t, "ingest", vIngest, "$JS.API.CONSUMER.CREATE.CHAT_IN.spy", func(ctx context.Context) error {
		_, err := ingest.CreateConsumer(ctx, queue.StreamIn, jetstream.ConsumerConfig{Name: "spy"})
		return err
	})
	refused(t, "ingest", vIngest, "$JS.API.STREAM.MSG.GET.CHAT_IN", func(ctx context.Context) error {
		s, err := worker.Stream(ctx, queue.StreamIn) // the worker may look the stream up; the edge uses it
		if err != nil {
			return err
		}
		_ = s
		_, err = ingest.Conn().RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.CHAT_IN", []byte(`{"seq":1}`))
		return err
	})
	refused(t, "ingest", vIngest, "chat.in.>", subscribe(ingest, "chat.in.>"))
	refused(t, "ingest", vIngest, "_INBOX.worker.>", subscribe(ingest, "_INBOX.worker.>"))
	for role, c := range map[string]struct {
		js jetstream.JetStream
		v  *violations
	}{"worker": {worker, vWorker}, "relay": {relay, vRelay}, "dashboard": {dash, vDash}} {
		refused(t, role, c.v, "chat.events.>", subscribe(c.js, "chat.events.>"))
		refused(t, role, c.v, "$JS.API.CONSUMER.CREATE.CHAT_EVENTS", func(ctx context.Context) error {
			_, err := c.js.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{})
			return err
		})
		refused(t, role, c.v, "$JS.API.STREAM.DELETE.CHAT_IN", func(ctx context.Context) error {
			return c.js.DeleteStream(ctx, queue.StreamIn)
		})
	}
	refused(t, "ingest", vIngest, "$JS.API.STREAM.UPDATE.CHAT_IN", func(ctx context.Context) error {
		_, err := ingest.UpdateStream(ctx, jetstream.StreamConfig{Name: queue.StreamIn, Subjects: []string{"chat.in.>"}})
		return err
	})

	// No TLS trust or no credentials: no connection at all.
	if nc, err := nats.Connect(sc.URL(), nats.RootCAs(sc.CAFile)); err == nil {
		nc.Close()
		t.Error("a client without credentials connected")
	}
	if nc, err := nats.Connect(strings.ReplaceAll(sc.URL(), "tls://", "nats://")); err == nil {
		nc.Close()
		t.Error("a client that does not trust the cluster's CA connected")
	}
}
