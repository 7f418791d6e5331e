package queue_test

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// BenchmarkClusterPublish is what a 3-node cluster takes into CHAT_IN
// with 3 replicas (R3), beside 1 replica (R1) in the same run: 600-byte messages (an accepted message's JSON is
// 400–700 bytes) with a Nats-Msg-Id each, as the edge publishes, up to
// 4,096 awaiting their acks; with R3 each ack means two of the three
// servers hold the message. For NATS sizing (docs/deploying.md):
//
//	go test -run '^$' -bench ClusterPublish -benchtime 50000x ./storage/queue/
func BenchmarkClusterPublish(b *testing.B) {
	for _, r := range []int{1, 3} {
		b.Run("R"+strconv.Itoa(r), func(b *testing.B) { benchClusterPublish(b, r) })
	}
}

func benchClusterPublish(b *testing.B, replicas int) {
	c := storagetest.StartNATSCluster(b, storagetest.NATSClusterConfig{})
	nc, err := queue.Connect(queue.ConnectConfig{URL: c.URL(), Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := queue.EnsureTopology(ctx, js, queue.Topology{Replicas: replicas}); err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 600)
	subject := queue.InSubject(peakdesk.P1, "bench")
	var futures []jetstream.PubAckFuture
	b.ResetTimer()
	for i := range b.N {
		f, err := js.PublishAsync(subject, payload, jetstream.WithMsgID("bench-"+strconv.Itoa(i)),
			jetstream.WithStallWait(30*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("acks not back in a minute")
	}
	b.StopTimer()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
