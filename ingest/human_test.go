package ingest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// cutProxy forwards TCP connections to a target until cut: then the
// connections it carries go silent — what either side sends is swallowed,
// nothing is closed, no reset is sent, as when a NAT or a proxy drops a
// connection — and new connections are closed at once (the target looks
// down). restore lets new connections through again; the cut ones stay
// silent.
type cutProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cut     bool
	refused int          // connections closed at once while cut
	dead    map[int]bool // carried connections (by number) that were cut
	conns   []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, dead: map[int]bool{}}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *cutProxy) accept() {
	for n := 0; ; n++ {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.refused++
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, s)
		p.mu.Unlock()
		go p.pipe(n, c, s)
		go p.pipe(n, s, c)
	}
}

// pipe copies from src to dst while connection n is not cut, and swallows
// what comes after.
func (p *cutProxy) pipe(n int, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 && !p.isDead(n) {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			if !p.isDead(n) {
				dst.Close()
			}
			return
		}
	}
}

func (p *cutProxy) isDead(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		p.dead[n] = true
	}
	return p.dead[n]
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
}

func (p *cutProxy) refusals() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// proxiedDB opens the database at dbURL through a cutProxy.
func proxiedDB(t *testing.T, dbURL string) (*storage.DB, *cutProxy) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Host == "" || strings.HasPrefix(u.Host, "/") {
		t.Skipf("the test database is not reached over TCP: %s", u.Redacted())
	}
	p := newCutProxy(t, u.Host)
	u.Host = p.ln.Addr().String()
	db, err := storage.Open(context.Background(), u.String(), 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db, p
}

// botConversation stores a conversation of shop1 the bot has answered.
func botConversation(t *testing.T, db *storage.DB, n int) string {
	t.Helper()
	conv, user := newTestID("c", n), fmt.Sprintf("u%d", n)
	m := &peakdesk.Message{ID: newTestID("a", n), ShopID: "shop1", ConversationID: conv, UserID: user,
		Text: "你好", Priority: peakdesk.P2, AcceptedAt: time.Now().UTC()}
	r := &peakdesk.Reply{ID: newTestID("d", n), ShopID: "shop1", ConversationID: conv, MessageIDs: []string{m.ID},
		Text: "您好", Source: peakdesk.SourceLLM}
	if _, _, err := db.SaveAnsweredMessage(context.Background(), m, r, nil); err != nil {
		t.Fatal(err)
	}
	return conv
}

func newTestID(prefix string, n int) string { return fmt.Sprintf("%s%0*x", prefix, 32-len(prefix), n) }

// humanTest is a database, a listener reaching it through a cutProxy
// (checked after idle, reconnecting on a short back-off) and two bot
// conversations.
type humanTest struct {
	db           *storage.DB // direct
	proxy        *cutProxy
	h            *humanOwners
	conv1, conv2 string
}

func newHumanTest(t *testing.T, log *slog.Logger, logEvery time.Duration) *humanTest {
	t.Helper()
	ctx := context.Background()
	dbURL := storagetest.DatabaseURL(t)
	db, err := storage.Open(ctx, dbURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.EnsureShop(ctx, "shop1", "shop1"); err != nil {
		t.Fatal(err)
	}
	via, proxy := proxiedDB(t, dbURL)
	ht := &humanTest{db: db, proxy: proxy, conv1: botConversation(t, db, 1), conv2: botConversation(t, db, 2)}
	ht.h = newHumanOwners(via, log)
	ht.h.idle, ht.h.logEvery = 300*time.Millisecond, logEvery
	ht.h.backoff = peakdesk.LinearBackOff{Step: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ht.h.start(sctx)
	t.Cleanup(ht.h.stop)
	if ht.h.up() != 1 {
		t.Fatal("the listener did not connect at start")
	}
	return ht
}

func (ht *humanTest) claim(t *testing.T, conv string) {
	t.Helper()
	if _, _, err := ht.db.ClaimForAgent(context.Background(),
		storage.DeskActor{Agent: "ann", Scope: "shop1", Via: "test"}, conv); err != nil {
		t.Fatal(err)
	}
}

// A listening connection that dies without a word (no reset: a NAT drop,
// a failover behind a proxy) is noticed by the idle check: the edge knows
// it does not know (so shed messages naming a conversation get 429), and
// once Postgres is reachable again it reloads the full set — a takeover
// made while it was away, whose notification went nowhere, is seen.
func TestTheEdgeNoticesASilentlyDeadListenerAndReloadsWhoOwnsWhat(t *testing.T) {
	t.Parallel()
	ht := newHumanTest(t, storagetest.Logger(t), time.Minute)
	ht.claim(t, ht.conv1)
	storagetest.WaitFor(t, "the edge hears of the first takeover", 10*time.Second, func() bool {
		human, known := ht.h.owns("shop1", ht.conv1)
		return human && known
	})

	ht.proxy.setCut(true)
	ht.claim(t, ht.conv2) // its notification is swallowed
	storagetest.WaitFor(t, "the edge notices the silent connection", 20*time.Second, func() bool {
		_, known := ht.h.owns("shop1", ht.conv2)
		return !known
	})
	if up := ht.h.up(); up != 0 {
		t.Errorf("listener up %v while it does not know, want 0", up)
	}
	// Postgres is reachable again only after the takeover committed: only
	// a reload can tell the edge about it.
	ht.proxy.setCut(false)
	storagetest.WaitFor(t, "the edge reloads who owns what", 20*time.Second, func() bool {
		human, known := ht.h.owns("shop1", ht.conv2)
		return human && known
	})
	if human, _ := ht.h.owns("shop1", ht.conv1); !human {
		t.Error("the first takeover is lost after the reload")
	}
	if up := ht.h.up(); up != 1 {
		t.Errorf("listener up %v after reconnecting, want 1", up)
	}
	// It follows moves on the new connection.
	if _, err := ht.db.HandBack(context.Background(), storage.DeskActor{Agent: "ann", Scope: "shop1", Via: "test"},
		ht.conv1); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the edge hears of the handback", 10*time.Second, func() bool {
		human, known := ht.h.owns("shop1", ht.conv1)
		return !human && known
	})
}

// While Postgres cannot be reached the listener retries on its back-off
// and logs the outage once — not once per attempt — and once more when it
// is back.
func TestTheListenerLogsAnOutageOnceNotPerAttempt(t *testing.T) {
	t.Parallel()
	rec := &recordingHandler{}
	ht := newHumanTest(t, slog.New(rec), time.Hour)
	ht.proxy.setCut(true)
	storagetest.WaitFor(t, "ten connection attempts fail", 30*time.Second, func() bool {
		return ht.proxy.refusals() >= 10
	})
	if got := rec.count(slog.LevelWarn); got != 1 {
		t.Errorf("%d warnings over %d failed attempts, want 1: %s", got, ht.proxy.refusals(), rec.text())
	}
	ht.proxy.setCut(false)
	storagetest.WaitFor(t, "the listener is back", 20*time.Second, func() bool { return ht.h.up() == 1 })
	if got := rec.count(slog.LevelInfo); got != 1 || !strings.Contains(rec.text(), "again") {
		t.Errorf("%d infos after reconnecting, want 1 saying it follows again: %s", got, rec.text())
	}
	if got := rec.count(slog.LevelWarn); got != 1 {
		t.Errorf("%d warnings for one outage, want 1: %s", got, rec.text())
	}
}

// The back-off between attempts grows by its step (1 s) to its cap (30 s).
func TestTheListenersBackOffGrowsToItsCap(t *testing.T) {
	t.Parallel()
	h := newHumanOwners(nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.backoff.Jitter = 0
	var got []time.Duration
	for range 32 {
		got = append(got, h.nextWait())
	}
	if got[0] != time.Second || got[1] != 2*time.Second || got[31] != 30*time.Second {
		t.Errorf("waits %v, want 1 s, 2 s, … up to 30 s", got)
	}
}

// recordingHandler keeps the records logged through it.
type recordingHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (r *recordingHandler) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recordingHandler) WithGroup(string) slog.Handler      { return r }

func (r *recordingHandler) count(level slog.Level) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level == level {
			n++
		}
	}
	return n
}

func (r *recordingHandler) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, rec := range r.recs {
		b.WriteString(rec.Level.String() + " " + rec.Message + "; ")
	}
	return b.String()
}
