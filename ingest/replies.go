package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// replyHub is the one reader of CHAT_EVENTS in an edge process. An ordered
// consumer delivers every new reply event, with its stream sequence, to the
// requests waiting for it: ?wait= requests by message id, and the open
// event streams — a customer's by customer, a conversation's by
// conversation. One consumer per process, not one per client, so the
// number of open event streams is bounded by memory, not by JetStream's
// consumer limits.
//
// The hub also remembers the last event of each customer it has seen
// (seen), so a stream reopened with a Last-Event-ID the customer has
// nothing newer than opens without reading JetStream at all.
type replyHub struct {
	heartbeat time.Duration
	metrics   *pushMetrics

	mu       sync.Mutex
	waiters  map[string][]chan *peakdesk.Reply // by message id
	nwaiters atomic.Int64
	byUser   map[string]*pushStream // customers' streams, by shop and customer: list heads
	byConv   map[string]*pushStream // conversations' streams, by shop and conversation
	// beatLists lists every stream by heartbeat slice (its id modulo
	// heartbeatSlices), each at its beatAt: the heartbeat walks one list
	// a tick, a chunk at a time.
	beatLists [heartbeatSlices][]*pushStream
	// afterChunk, when set (tests), runs after each chunk of a heartbeat
	// walk, without hub.mu.
	afterChunk func(slice uint64)
	streams    int
	nextID     uint64
	closing    bool // CloseStreams: new streams are closed at once
	seen       seenEvents
	// legacyUntil (unix nanos) is until when CHAT_EVENTS may hold events on
	// the per-conversation subjects of before (queue.LegacyEventSubject):
	// conversation streams replay those too until then.
	legacyUntil atomic.Int64
	eventsAge   time.Duration

	cc       jetstream.ConsumeContext
	partials *nats.Subscription
	desk     *nats.Subscription
	beats    sync.WaitGroup // the heartbeat goroutine
	stopBeat chan struct{}
	// goroutines counts the streams' reader and writer goroutines, so
	// CloseStreams can wait for them.
	goroutines goGroup
}

// goGroup runs goroutines and waits for them, refusing new ones once the
// wait has begun (a WaitGroup must not be added to while it is waited on).
type goGroup struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// Go runs f in a goroutine, unless Wait has begun: then it reports false.
func (g *goGroup) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Go(f)
	return true
}

// Wait refuses new goroutines and waits for those running.
func (g *goGroup) Wait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// hubEvent is one reply event with its CHAT_EVENTS sequence, or a partial
// reply (streamed text so far), or a customer message stored for a human
// agent (desk, shown only to those who read for others); the last two have
// no sequence and are not replayable.
type hubEvent struct {
	seq  uint64
	data []byte
	// at is when the event was stored in CHAT_EVENTS (zero for partials
	// and desk messages): the start of its delivery time.
	at      time.Time
	conv    string
	partial bool
	desk    bool
}

// liveOnly reports whether ev is not a stored reply event: it has no
// sequence and is never replayed.
func (ev hubEvent) liveOnly() bool { return ev.partial || ev.desk }

func newReplyHub(heartbeat time.Duration, m *pushMetrics) *replyHub {
	return &replyHub{
		heartbeat: heartbeat,
		metrics:   m,
		waiters:   map[string][]chan *peakdesk.Reply{},
		byUser:    map[string]*pushStream{},
		byConv:    map[string]*pushStream{},
		seen:      newSeenEvents(1 << 17),
		stopBeat:  make(chan struct{}),
	}
}

func (h *replyHub) start(ctx context.Context, js jetstream.JetStream, events jetstream.Stream) error {
	info, err := events.Info(ctx)
	if err != nil {
		return fmt.Errorf("reply events: %w", err)
	}
	// The hub reads every event after the stream's last one now, so what it
	// has seen of a customer is complete from there on (seenEvents' floor).
	h.seen.floor = info.State.LastSeq
	h.eventsAge = info.Config.MaxAge
	h.detectLegacy(ctx, events)
	cons, err := js.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{queue.EventsFilter},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    info.State.LastSeq + 1,
	})
	if err != nil {
		return fmt.Errorf("reply events consumer: %w", err)
	}
	h.cc, err = cons.Consume(h.onEvent)
	if err != nil {
		return fmt.Errorf("reply events consume: %w", err)
	}
	// Partial replies of streaming answers travel on core NATS only.
	h.partials, err = js.Conn().Subscribe(queue.PartialsFilter, h.onPartial)
	if err != nil {
		h.cc.Stop()
		return fmt.Errorf("partial replies: %w", err)
	}
	// So do customer messages announced to human agents (takeover).
	h.desk, err = js.Conn().Subscribe("chat.desk.>", h.onDesk)
	if err != nil {
		_ = h.partials.Unsubscribe()
		h.cc.Stop()
		return fmt.Errorf("desk messages: %w", err)
	}
	h.beats.Go(h.beat)
	return nil
}

// detectLegacy notes whether CHAT_EVENTS still holds events on the
// per-conversation subjects of before, and until when it may.
func (h *replyHub) detectLegacy(ctx context.Context, events jetstream.Stream) {
	msg, err := events.GetLastMsgForSubject(ctx, "chat.events.*.*")
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil || h.eventsAge <= 0:
		h.legacyUntil.Store(time.Now().Add(24 * time.Hour).UnixNano()) // cannot tell: keep reading them
	default:
		h.legacyUntil.Store(msg.Time.Add(h.eventsAge).UnixNano())
	}
}

func (h *replyHub) legacyActive() bool {
	return time.Now().UnixNano() < h.legacyUntil.Load()
}

func (h *replyHub) stop() {
	if h.desk != nil {
		_ = h.desk.Unsubscribe()
	}
	if h.partials != nil {
		_ = h.partials.Unsubscribe()
	}
	if h.cc != nil {
		h.cc.Stop()
		<-h.cc.Closed()
	}
	select {
	case <-h.stopBeat:
	default:
		close(h.stopBeat)
	}
	h.beats.Wait()
}

func userKey(shop, user string) string { return shop + "\x00" + user }

func (h *replyHub) onEvent(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	rt, ok := queue.RouteOf(msg.Subject(), msg.Headers())
	if !ok {
		return
	}
	ev := hubEvent{seq: meta.Sequence.Stream, data: msg.Data(), conv: rt.Conversation, at: meta.Timestamp}
	h.metrics.toHub.Observe(time.Since(ev.at).Seconds())
	// The reply, for the ?wait= requests, is read before the lock.
	var r *peakdesk.Reply
	if h.nwaiters.Load() > 0 {
		r = new(peakdesk.Reply)
		if json.Unmarshal(ev.data, r) != nil {
			r = nil
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if rt.User != "" {
		key := userKey(rt.Shop, rt.User)
		h.seen.note(key, ev.seq)
		for s := h.byUser[key]; s != nil; s = s.next {
			s.push(ev)
		}
	} else if h.eventsAge > 0 {
		// An edge or worker of before is still publishing.
		h.legacyUntil.Store(time.Now().Add(h.eventsAge).UnixNano())
	}
	for s := h.byConv[userKey(rt.Shop, rt.Conversation)]; s != nil; s = s.next {
		s.push(ev)
	}
	if r == nil {
		return
	}
	for _, id := range r.MessageIDs {
		for _, ch := range h.waiters[id] {
			select {
			case ch <- r:
			default:
			}
		}
	}
}

// onPartial hands a partial reply to its customer's and its conversation's
// open streams.
func (h *replyHub) onPartial(msg *nats.Msg) {
	rt, ok := queue.RouteOf(msg.Subject, msg.Header)
	if !ok {
		return
	}
	ev := hubEvent{data: msg.Data, conv: rt.Conversation, partial: true}
	h.mu.Lock()
	defer h.mu.Unlock()
	if rt.User != "" {
		for s := h.byUser[userKey(rt.Shop, rt.User)]; s != nil; s = s.next {
			s.push(ev)
		}
	}
	for s := h.byConv[userKey(rt.Shop, rt.Conversation)]; s != nil; s = s.next {
		s.push(ev)
	}
}

// onDesk hands a customer message stored for a human agent
// (queue.DeskSubject: chat.desk.<shop>.<conversation>) to the
// conversation's open streams; those of readers for others show it.
func (h *replyHub) onDesk(msg *nats.Msg) {
	shop, conv, ok := strings.Cut(strings.TrimPrefix(msg.Subject, "chat.desk."), ".")
	if !ok || shop == "" || conv == "" || strings.Contains(conv, ".") {
		return
	}
	ev := hubEvent{data: msg.Data, conv: conv, desk: true}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := h.byConv[userKey(shop, conv)]; s != nil; s = s.next {
		s.push(ev)
	}
}

// wait registers interest in the reply to message id. cancel must be called
// when the caller stops waiting.
func (h *replyHub) wait(id string) (<-chan *peakdesk.Reply, func()) {
	ch := make(chan *peakdesk.Reply, 1)
	h.mu.Lock()
	h.waiters[id] = append(h.waiters[id], ch)
	h.mu.Unlock()
	h.nwaiters.Add(1)
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		list := h.waiters[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				h.nwaiters.Add(-1)
				break
			}
		}
		if len(list) == 0 {
			delete(h.waiters, id)
		} else {
			h.waiters[id] = list
		}
	}
}

// register adds stream s to the hub, so it gets every live event from now
// on, and reports whether the stream must replay from JetStream: false when
// the hub has seen every event of the customer after the stream's
// Last-Event-ID, and saw none (conversation streams read events of before
// too while there may be any). A stream registered while the hub is
// closing is closed at once.
func (h *replyHub) register(s *pushStream) (replay bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false, &peakdesk.Error{Code: peakdesk.EOverloaded, Message: "the server is shutting down, reconnect",
			RetryAfter: time.Second}
	}
	h.nextID++
	s.id = h.nextID
	index := h.byUser
	if s.conv != "" {
		index = h.byConv
	}
	if head := index[s.key]; head != nil {
		head.prev = s
		s.next = head
	}
	index[s.key] = s
	slice := s.id % heartbeatSlices
	s.beatAt = len(h.beatLists[slice])
	h.beatLists[slice] = append(h.beatLists[slice], s)
	h.streams++
	replay = !h.seen.covers(userKey(s.shop, s.user), s.sent) || (s.conv != "" && h.legacyActive())
	return replay, nil
}

// remove takes stream s out of the hub; it is idempotent.
func (h *replyHub) remove(s *pushStream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	index := h.byUser
	if s.conv != "" {
		index = h.byConv
	}
	if index[s.key] != s && s.prev == nil {
		return // not (or no longer) listed
	}
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		index[s.key] = s.next
		if s.next == nil {
			delete(index, s.key)
		}
	}
	if s.next != nil {
		s.next.prev = s.prev
	}
	s.prev, s.next = nil, nil
	// Out of its heartbeat list: the last of the list takes its place.
	list := h.beatLists[s.id%heartbeatSlices]
	last := list[len(list)-1]
	list[s.beatAt], last.beatAt = last, s.beatAt
	list[len(list)-1] = nil
	h.beatLists[s.id%heartbeatSlices] = list[:len(list)-1]
	h.streams--
}

// closeAll closes every stream for a shutdown and makes the hub refuse new
// ones.
func (h *replyHub) closeAll() {
	h.mu.Lock()
	h.closing = true
	var all []*pushStream
	for _, index := range []map[string]*pushStream{h.byUser, h.byConv} {
		for _, head := range index {
			for s := head; s != nil; s = s.next {
				all = append(all, s)
			}
		}
	}
	h.mu.Unlock()
	for _, s := range all {
		s.close(closeShutdown)
	}
}

// heartbeatSlices is how many parts the heartbeat interval is cut into:
// each tick looks at one slice of the streams, so keep-alives go out
// spread over the interval, not all at once (19,000 streams: about 600 a
// tick, a tick every 470 ms at the default 15 s).
const heartbeatSlices = 32

// beatChunk is how many streams the heartbeat takes from its list under
// hub.mu at a time: a delivery waits for at most one chunk's copy, never
// for the walk.
const beatChunk = 256

// beat sends keep-alives to the streams that have been quiet for a
// heartbeat interval; writing them also finds connections that died
// without a word.
func (h *replyHub) beat() {
	t := time.NewTicker(h.heartbeat / heartbeatSlices)
	defer t.Stop()
	chunk := make([]*pushStream, 0, beatChunk)
	for tick := uint64(0); ; tick++ {
		select {
		case <-t.C:
		case <-h.stopBeat:
			return
		}
		h.beatSlice(tick%heartbeatSlices, chunk)
	}
}

// beatSlice calls heartbeat on every stream of one heartbeat slice,
// taking them from its list a chunk at a time, from the end: a stream
// removed meanwhile is replaced by the list's last, which is either
// visited already (it may be visited twice: harmless) or still ahead, so
// every stream listed throughout the walk is visited; streams added
// meanwhile (at the end) wait for the next round, like new ones should.
func (h *replyHub) beatSlice(slice uint64, chunk []*pushStream) {
	h.mu.Lock()
	hi := len(h.beatLists[slice])
	h.mu.Unlock()
	for hi > 0 {
		h.mu.Lock()
		list := h.beatLists[slice]
		hi = min(hi, len(list))
		lo := max(hi-cap(chunk), 0)
		chunk = append(chunk[:0], list[lo:hi]...)
		h.mu.Unlock()
		for _, s := range chunk {
			s.heartbeat()
		}
		if h.afterChunk != nil {
			h.afterChunk(slice)
		}
		hi = lo
	}
	clear(chunk[:cap(chunk)])
}

// seenEvents remembers the last event sequence of each customer the hub has
// seen, in two generations of bounded size: when the current one is full
// the older one is forgotten and the floor rises to its last sequence. A
// customer not remembered may have events up to the floor, so a stream
// whose Last-Event-ID is below it replays from JetStream.
type seenEvents struct {
	floor     uint64
	limit     int
	cur, prev map[string]uint64
	// curLast and prevLast are the last sequences noted in each generation.
	curLast, prevLast uint64
}

func newSeenEvents(limit int) seenEvents {
	return seenEvents{limit: limit, cur: map[string]uint64{}, prev: map[string]uint64{}}
}

func (s *seenEvents) note(key string, seq uint64) {
	if _, ok := s.cur[key]; !ok && len(s.cur) >= s.limit {
		// Events arrive in order: what prev forgets is no newer than its last.
		s.floor = max(s.floor, s.prevLast)
		s.prev, s.prevLast = s.cur, s.curLast
		s.cur = make(map[string]uint64, s.limit/4)
	}
	s.cur[key] = seq
	s.curLast = seq
}

// covers reports whether the hub knows that key has no event after seq.
func (s *seenEvents) covers(key string, seq uint64) bool {
	if seq < s.floor {
		return false
	}
	last, ok := s.cur[key]
	if !ok {
		last = s.prev[key]
	}
	return last <= seq
}
