package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Group commit of turns. Each turn's reply is one small transaction; at
// peak most of a transaction's cost is its own (BEGIN, COMMIT and its WAL
// flush, a pooled connection held), not the turn's rows. A TurnCommitter
// stores the turns that are ready at the same time in one transaction, each
// under a savepoint of its own: a turn that fails (ErrTurnLost,
// ErrHumanOwned, ErrAlreadyAnswered, any error of its statements or of its
// InTx) is rolled back to its savepoint and fails alone, the others commit.
// Nothing waits to fill a group: a turn that finds a committer free is
// stored at once (alone, as DB.SaveTurn), and the turns that arrive while
// the committers are busy form the next groups.
//
// Every caller learns its own turn's outcome only once the group's
// transaction committed (or failed), so exactly-once holds as with
// DB.SaveTurn. Should the group's transaction fail as a whole before its
// commit (a deadlock with another transaction, a broken connection), none
// of it is stored and each turn is stored again alone.

// TurnCommitterConfig configures a TurnCommitter. DB is required.
type TurnCommitterConfig struct {
	DB *DB
	// MaxTurns is the most turns stored in one transaction. Default 32, at
	// most 60 (each turn's savepoint is a subtransaction; beyond 64 of them
	// every backend's visibility checks get slower).
	MaxTurns int
	// Committers is how many groups may be stored at the same time (each
	// on a connection of its own). Default 2: the fewer, the more turns
	// share a transaction once saves pile up.
	Committers int
	// Timeout bounds one group's transaction. Default 15 s.
	Timeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c *TurnCommitterConfig) setDefaults() {
	c.MaxTurns = cmp.Or(c.MaxTurns, 32)
	c.Committers = cmp.Or(c.Committers, 2)
	c.Timeout = cmp.Or(c.Timeout, 15*time.Second)
	c.Logger = cmp.Or(c.Logger, slog.Default())
}

func (c *TurnCommitterConfig) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("storage: turn committer: DB is required")
	case c.MaxTurns < 1 || c.MaxTurns > 60:
		return errors.New("storage: turn committer: MaxTurns must be 1 to 60")
	case c.Committers < 1:
		return errors.New("storage: turn committer: Committers must be at least 1")
	case c.Timeout <= 0:
		return errors.New("storage: turn committer: Timeout must be positive")
	}
	return nil
}

// TurnCommitter stores concurrent turns together (group commit) and notes
// published reply events in the same transactions. It needs no starting:
// its committers run while there is work. Wait waits for them.
type TurnCommitter struct {
	cfg TurnCommitterConfig
	log *slog.Logger

	mu        sync.Mutex
	queue     []*turnRequest
	published []replyRef
	running   int
	idle      *sync.Cond // on mu: broadcast when a committer stops

	groups, grouped atomic.Int64 // for tests and metrics
}

type replyRef struct{ shop, id string }

// turnRequest is one SaveTurn waiting for its group.
type turnRequest struct {
	ctx      context.Context
	hold     *Hold
	tr       TurnReply
	lease    time.Duration
	maxBatch int
	// state: 0 queued, 1 taken by a committer, 2 withdrawn by its caller.
	state atomic.Int32
	next  *Hold
	err   error
	done  chan struct{}
}

// NewTurnCommitter returns a TurnCommitter for cfg.
func NewTurnCommitter(cfg TurnCommitterConfig) (*TurnCommitter, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &TurnCommitter{cfg: cfg, log: cfg.Logger.With("component", "turn_committer")}
	c.idle = sync.NewCond(&c.mu)
	return c, nil
}

// SaveTurn is DB.SaveTurn, stored with the turns that are ready at the same
// time. tr.InTx runs in the group's transaction under the turn's savepoint
// with a context that has ctx's values (a trace) but the group's deadline;
// it must not end the transaction. A turn still queued when ctx ends is
// withdrawn (ctx's error); once its group is being stored, SaveTurn waits
// for the group's outcome.
func (c *TurnCommitter) SaveTurn(ctx context.Context, h *Hold, tr TurnReply, lease time.Duration, maxBatch int) (*Hold, error) {
	req := &turnRequest{ctx: ctx, hold: h, tr: tr, lease: lease, maxBatch: maxBatch, done: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, req)
	c.wakeLocked()
	c.mu.Unlock()
	select {
	case <-req.done:
	case <-ctx.Done():
		if req.state.CompareAndSwap(0, 2) {
			return nil, ctx.Err()
		}
		<-req.done
	}
	return req.next, req.err
}

// EventPublished notes that reply id's event is published: in the next
// group's transaction, or in one of its own when no turn is waiting. It
// does not wait; should the note be lost (the process dies), the sweeper
// publishes the event again (JetStream drops it as a duplicate).
func (c *TurnCommitter) EventPublished(shop, id string) {
	c.mu.Lock()
	c.published = append(c.published, replyRef{shop, id})
	c.wakeLocked()
	c.mu.Unlock()
}

// Wait waits until the committers have stored everything queued so far
// (a committer stops only once nothing is queued).
func (c *TurnCommitter) Wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.running > 0 {
		c.idle.Wait()
	}
}

// Groups returns how many transactions stored more than one turn, and how
// many turns they stored.
func (c *TurnCommitter) Groups() (groups, turns int64) { return c.groups.Load(), c.grouped.Load() }

func (c *TurnCommitter) wakeLocked() {
	if c.running < c.cfg.Committers {
		c.running++
		go c.run()
	}
}

// run stores groups until nothing is queued.
func (c *TurnCommitter) run() {
	for {
		c.mu.Lock()
		var group []*turnRequest
		for len(c.queue) > 0 && len(group) < c.cfg.MaxTurns {
			req := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			if req.state.CompareAndSwap(0, 1) {
				group = append(group, req)
			}
		}
		if len(c.queue) == 0 {
			c.queue = nil // let the backing array go
		}
		published := c.published
		c.published = nil
		if len(group) == 0 && len(published) == 0 {
			c.running--
			c.idle.Broadcast()
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.store(group, published)
	}
}

// store stores group (and notes published) and tells each turn its outcome
// as soon as it is known: the turns the group's transaction stored once it
// committed, a turn stored again alone once that is done.
func (c *TurnCommitter) store(group []*turnRequest, published []replyRef) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	switch len(group) {
	case 0:
		if err := c.cfg.DB.eventsPublished(ctx, published); err != nil {
			c.log.Warn("noting published reply events failed; the sweeper publishes them again", "err", err)
		}
		return
	case 1:
		c.storeAlone(ctx, group[0])
		if len(published) > 0 {
			if err := c.cfg.DB.eventsPublished(ctx, published); err != nil {
				c.log.Warn("noting published reply events failed; the sweeper publishes them again", "err", err)
			}
		}
		return
	}
	// Conversations in id order: two groups lock theirs in the same order.
	slices.SortFunc(group, func(a, b *turnRequest) int {
		return strings.Compare(a.hold.ConversationID, b.hold.ConversationID)
	})
	alone, err := c.storeGroup(ctx, group, published)
	if err != nil {
		// Nothing of the group is stored: each turn again, alone.
		c.log.Warn("storing a group of turns failed; storing them one by one", "turns", len(group), "err", err)
		alone = group
	}
	for _, req := range group {
		if !slices.Contains(alone, req) {
			close(req.done)
		}
	}
	for _, req := range alone {
		c.storeAlone(ctx, req)
	}
}

// storeAlone stores req in a transaction of its own (DB.SaveTurn) and tells
// its caller.
func (c *TurnCommitter) storeAlone(ctx context.Context, req *turnRequest) {
	tctx, cancel := turnContext(ctx, req.ctx)
	req.next, req.err = c.cfg.DB.SaveTurn(tctx, req.hold, req.tr, req.lease, req.maxBatch)
	cancel()
	close(req.done)
}

// storeGroup stores group in one transaction, a savepoint per turn, and
// sets each turn's outcome but for those it returns: turns that lost a
// lock conflict with another transaction, to be stored again alone. An
// error means nothing was stored.
func (c *TurnCommitter) storeGroup(ctx context.Context, group []*turnRequest, published []replyRef) (alone []*turnRequest, err error) {
	tx, err := c.cfg.DB.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var stored []*turnRequest
	for i, req := range group {
		sp := fmt.Sprintf("turn_%d", i)
		pre := func(b *pgx.Batch) int {
			n := 0
			if i == 0 {
				// Before the first savepoint, for the whole transaction:
				// no NOTIFY from it (NotifyRelays after commit), and the
				// events published meanwhile.
				b.Queue(deferRelayNotify)
				n++
				if len(published) > 0 {
					queueEventsPublished(b, published)
					n++
				}
			}
			b.Queue(`SAVEPOINT ` + sp)
			return n + 1
		}
		tctx, cancel := turnContext(ctx, req.ctx)
		next, terr := saveTurnTx(tctx, tx, req.hold, req.tr, req.lease, req.maxBatch, pre)
		cancel()
		if terr == nil {
			req.next = next
			stored = append(stored, req)
			continue
		}
		// Should the first turn's statements before its savepoint have
		// failed (the group's own), there is no savepoint to go back to:
		// the rollback fails, and so does the group.
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT `+sp); err != nil {
			return nil, fmt.Errorf("rollback to savepoint: %w (after %w)", err, terr)
		}
		if lockConflict(terr) {
			alone = append(alone, req)
			continue
		}
		req.err = saveTurnErr(terr)
	}
	if err := tx.Commit(ctx); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, err // the server refused it: nothing is stored
		}
		// Whether it committed is unknown: as with DB.SaveTurn, the
		// turns fail and their messages' redeliveries find out.
		err = fmt.Errorf("storage: save turn: commit: %w", err)
		for _, req := range stored {
			req.next, req.err = nil, err
		}
		return alone, nil
	}
	c.groups.Add(1)
	c.grouped.Add(int64(len(group)))
	return alone, nil
}

// lockConflict reports whether err is a deadlock or serialization failure,
// which a transaction of its own would likely not meet.
func lockConflict(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001" || pgErr.Code == "55P03")
}

// turnContext returns a context with the values of a turn's (its trace) and
// the deadline of its group's.
func turnContext(group, turn context.Context) (context.Context, context.CancelFunc) {
	ctx := context.WithoutCancel(turn)
	if d, ok := group.Deadline(); ok {
		return context.WithDeadline(ctx, d)
	}
	return context.WithCancel(ctx)
}

// queueEventsPublished queues the note that refs' events are published.
func queueEventsPublished(b *pgx.Batch, refs []replyRef) {
	shops, ids := make([]string, len(refs)), make([]string, len(refs))
	for i, r := range refs {
		shops[i], ids[i] = r.shop, r.id
	}
	b.Queue(`UPDATE replies r SET event_pending = false
		FROM unnest($1::text[], $2::text[]) AS p(shop_id, id)
		WHERE r.id = p.id AND r.shop_id = p.shop_id AND r.event_pending`, shops, ids)
}

func (db *DB) eventsPublished(ctx context.Context, refs []replyRef) error {
	b := &pgx.Batch{}
	queueEventsPublished(b, refs)
	if err := db.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storage: events published: %w", err)
	}
	return nil
}
