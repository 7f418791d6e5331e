package workers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A message's fate. Whoever handles a message JetStream delivered — the
// handler of a queued chat message, the dead-letter mover for an advisory,
// the scheduler for a message it fetched but never started — decides its
// fate as a verdict and returns it; settle tells JetStream, and it is the
// only code that acks, naks, terminates or extends a message. Each message
// gets exactly one final verdict (ack, nak or term); in progress may come
// any number of times before it.

// fate is what a verdict tells JetStream.
type fate int

const (
	// fateAck: done. The message is stored (answered, or waiting in
	// Postgres for its conversation's next turn) and must not come back.
	fateAck fate = iota + 1
	// fateNak: deliver it again, after the verdict's delay (0: at once).
	fateNak
	// fateTerm: it can never be handled; do not deliver it again.
	fateTerm
	// fateInProgress: still being worked on; restart its AckWait. Not final.
	fateInProgress
)

// verdict is the fate of one delivered message.
type verdict struct {
	fate fate
	// delay is how long a nak'ed message waits before it is delivered again.
	delay time.Duration
	// reason says why a message was terminated (the handler logs it with
	// what it knows of the message).
	reason string
}

func ack() verdict                    { return verdict{fate: fateAck} }
func nak(delay time.Duration) verdict { return verdict{fate: fateNak, delay: max(delay, 0)} }
func term(reason string) verdict      { return verdict{fate: fateTerm, reason: reason} }
func inProgress() verdict             { return verdict{fate: fateInProgress} }

// final reports whether v decides the message's fate for good.
func (v verdict) final() bool { return v.fate != fateInProgress }

func (v verdict) String() string {
	switch v.fate {
	case fateAck:
		return "ack"
	case fateNak:
		return fmt.Sprintf("nak after %v", v.delay)
	case fateTerm:
		return "term: " + v.reason
	case fateInProgress:
		return "in progress"
	}
	return "none"
}

// settle tells JetStream msg's fate. An ack waits for the server's
// confirmation (a message acked is answered and must not come back); a
// lost one is harmless all the same: the redelivery finds the work done.
// Term is plain Term, not TermWithReason, which servers before 2.10.4 ignore
// (the message would come back).
func (w *Worker) settle(log *slog.Logger, msg jetstream.Msg, v verdict) {
	var err error
	switch v.fate {
	case fateAck:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = msg.DoubleAck(ctx)
		cancel()
	case fateNak:
		if v.delay > 0 {
			err = msg.NakWithDelay(v.delay)
		} else {
			err = msg.Nak()
		}
	case fateTerm:
		err = msg.Term()
	case fateInProgress:
		err = msg.InProgress()
	default:
		panic("workers: settle: a verdict without a fate")
	}
	if err != nil && v.final() {
		log.Warn("telling JetStream a message's fate failed; it will be delivered again", "verdict", v.String(),
			"err", err)
	}
}
