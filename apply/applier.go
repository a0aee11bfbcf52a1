package apply

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Capture is what apply needs of the local capture: *capture.Capturer.
type Capture interface {
	// WaitProcessed returns once every local write ending at or before
	// lsn has been versioned.
	WaitProcessed(ctx context.Context, lsn uint64) error
	// BeginApply and EndApply bracket the commit of an apply transaction
	// that recorded w; ok tells whether it committed.
	BeginApply(xid uint32, w meta.Written)
	EndApply(xid uint32, ok bool)
	// Pending returns the versions of local writes that are not recorded
	// in the database yet (call it before reading the database), and
	// whether some key has one capture is still storing.
	Pending(keys []meta.RowKey) (map[meta.RowKey]meta.RowVersion, bool)
	// FlushVersions returns once every pending version is recorded.
	FlushVersions(ctx context.Context) error
	// TruncationGen changes whenever capture records a local truncation.
	TruncationGen() uint64
}

// DefaultMaxBatch is Config.MaxBatch's default.
const DefaultMaxBatch = 2048

// DefaultWaitTimeout is Config.WaitTimeout's default.
const DefaultWaitTimeout = 30 * time.Second

// Config configures an Applier.
type Config struct {
	// Site is this site. Required.
	Site casualdb.SiteID
	// DSN is the local PostgreSQL connection string. Required.
	DSN string
	// Inbox is the site's inbox, read through one consumer per origin.
	// Required.
	Inbox Inbox
	// Capture is the local capture. Required.
	Capture Capture
	// Tables are the tables apply may write, and their partitions: a
	// change of any other relation (the casualdb schema, a catalog, a table
	// this site does not replicate) is parked with the reason, never
	// applied. Nil: every table (for tests of apply alone).
	Tables []TableID
	// MaxBatch is the most transactions of one origin applied in one local
	// transaction. Default 2048: a run's round trips and waits cost the
	// same for 10 transactions as for 2,000, and a backlog replays at
	// 8,900 transactions a second in runs of 256, 13,500 in runs of 4,096
	// (bench, backlog scenario). A run holds the locks of its rows until it
	// commits (tens of milliseconds for 2,048 single-row transactions).
	MaxBatch int
	// WaitTimeout bounds a wait for capture. Default 30s.
	WaitTimeout time.Duration
	// VersionCache is how many versions of rows it wrote apply keeps in
	// memory (see versionCache). Default 100000; negative: none.
	VersionCache int
	// DeletePolicy is the policy of tables not in Policies: what a delete
	// does to a concurrent update. Default conflict.DeleteWins.
	DeletePolicy conflict.DeletePolicy
	// Policies overrides DeletePolicy per table (schema-qualified name).
	Policies map[string]conflict.DeletePolicy
	// MergeColumns lists the tables whose columns merge one by one (each
	// its own last writer) instead of the whole row.
	MergeColumns map[string]bool
	// Logger; default slog.Default().
	Logger *slog.Logger
	// ObserveDelay, when set, is told for every transaction how long after
	// its commit at the origin it reached stage ("received": read from the
	// inbox; "applied": committed here). Clock differences between the
	// sites are included.
	ObserveDelay func(origin casualdb.SiteID, stage string, d time.Duration)
	// Resend, when set, asks origin to ship its transactions to this site
	// again from sequence from: called when an origin's sequence gap has
	// lasted GapResend (a transaction lost on the way), again every
	// GapResend while it lasts. It must return within seconds.
	Resend func(ctx context.Context, origin casualdb.SiteID, from uint64) error
	// GapResend; default 30s (a large catch-up has gaps that close by
	// themselves within seconds: asking sooner re-ships it all again).
	GapResend time.Duration
	// Hinter, when set, sees every transaction taken from the inbox
	// before it is applied or acknowledged (hinted handoff).
	Hinter Hinter
	// Peers, when set, returns the sites this one exchanges transactions
	// with (configured, or learned by gossip): apply reads each one's
	// transactions from the moment it is known. Others (the origin of a
	// hint) are found by looking at the inbox every discoverEvery. It is
	// called often and must be cheap.
	Peers func() []casualdb.SiteID
}

// OriginStats describes what was applied from one origin.
type OriginStats struct {
	Applied     uint64    // transactions applied since start
	Seq         uint64    // last applied origin sequence
	LastCommit  time.Time // origin commit time of the last applied transaction
	LastApplied time.Time // when it was applied here
	Epoch       string    // of the origin's outbox, which Seq counts in
	// Held is how many of its transactions apply has taken from the inbox
	// and holds, waiting for their turn (a predecessor, a dependency).
	Held int
}

// Lag is the delay of the last applied transaction: applied minus committed.
func (o OriginStats) Lag() time.Duration {
	if o.LastCommit.IsZero() {
		return 0
	}
	return max(o.LastApplied.Sub(o.LastCommit), 0)
}

// Stats are apply's counters since start.
type Stats struct {
	Applied uint64 // transactions applied
	// Informing counts the applied transactions that changed more than
	// heartbeat rows (meta.OnlyHeartbeat), and the duplicates of such
	// skipped: each one may change what this site's next transaction tells
	// its peers it has seen.
	Informing uint64
	Skipped   uint64 // duplicates recognised and skipped
	Changes   uint64 // row changes written
	Conflicts uint64 // true conflicts resolved (and logged)
	Parked    uint64 // changes or messages parked
	Garbled   uint64 // messages that did not decode (parked)
	// DependencyWaits counts transactions held back because a transaction
	// they causally depend on (from another origin) was not applied yet.
	DependencyWaits uint64
	// Resends counts requests to an origin to ship again what is missing.
	Resends uint64
	// Strangers counts the origins with messages in the inbox left unread
	// because apply reads at most maxStrangers origins that are neither
	// peers nor applied before (as the last look at the inbox found).
	Strangers uint64
	Origins   map[casualdb.SiteID]OriginStats
}

// Applier applies the inbox to the local database.
type Applier struct {
	cfg Config
	log *slog.Logger

	conns    map[casualdb.SiteID]*pgx.Conn
	main     *pgx.Conn
	progress map[casualdb.SiteID]meta.Progress
	tables   map[string]*localTable
	// truncs caches casualdb.truncation as of capture's truncation
	// generation truncGen (valid unless apply truncated since).
	truncs      map[string]casualdb.Version
	truncGen    uint64
	truncsValid bool
	vcache      *versionCache
	// floors holds the tables' collected floors as last read (a floor only
	// grows): the apply loop's goroutine only.
	floors map[string]casualdb.Version

	gapSince map[casualdb.SiteID]time.Time // when each origin's current gap was first seen
	depSince map[casualdb.SiteID]time.Time // when each origin's current dependency wait began
	resend   map[casualdb.SiteID]*resendState

	mu    sync.Mutex
	stats Stats
}

// New validates cfg and returns an Applier.
func New(cfg Config) (*Applier, error) {
	if cfg.Site == "" || cfg.DSN == "" || cfg.Inbox == nil || cfg.Capture == nil {
		return nil, fmt.Errorf("%w: apply needs site, dsn, inbox and capture", casualdb.ErrConfig)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.GapResend <= 0 {
		cfg.GapResend = 30 * time.Second
	}
	if cfg.WaitTimeout <= 0 {
		cfg.WaitTimeout = DefaultWaitTimeout
	}
	if cfg.VersionCache == 0 {
		cfg.VersionCache = 100000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Applier{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "apply"),
		stats: Stats{Origins: map[casualdb.SiteID]OriginStats{}},
	}, nil
}

// Stats returns a snapshot of the counters.
func (a *Applier) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Origins = make(map[casualdb.SiteID]OriginStats, len(a.stats.Origins))
	for k, v := range a.stats.Origins {
		s.Origins[k] = v
	}
	return s
}

func (a *Applier) count(f func(*Stats)) {
	a.mu.Lock()
	f(&a.stats)
	a.mu.Unlock()
}

// inMsg is one transaction from the inbox with its transport headers.
type inMsg struct {
	d      *delivery
	tx     *casualdb.Tx
	data   []byte // tx as shipped
	origin casualdb.SiteID
	seq    uint64
	epoch  string
	hinted bool // the Hinter has seen it
	// proof and cert show that origin signed it (casualdb.InboxTx.Proof):
	// kept with a hint.
	proof, cert []byte

	received time.Time // taken from the inbox
}

// progress is the origin's progress once im is applied.
func (im inMsg) progress(appliedAt time.Time) meta.Progress {
	return meta.Progress{Seq: im.seq, LSN: im.tx.LSN, CommitTime: im.tx.CommitTime, Epoch: im.epoch, AppliedAt: appliedAt}
}

// Run applies until ctx is done or a database error persists.
//
// It reads every origin through its own consumer and holds what it took in
// memory, in each origin's sequence order, until it can be applied: an
// origin whose next transaction waits (for its predecessor, or for what it
// causally depends on from another origin) stays where it is while the
// others go on, and goes on itself once the others have applied what it
// needs. Each pass over the origins applies at most one run (MaxBatch
// transactions, one local transaction) of each, so that dependent origins
// interleave finely.
func (a *Applier) Run(ctx context.Context) error {
	cfg, err := CanonicalConfig(a.cfg.DSN)
	if err != nil {
		return err
	}
	a.main, err = pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("apply: connect: %w", err)
	}
	a.conns = map[casualdb.SiteID]*pgx.Conn{}
	a.tables = map[string]*localTable{}
	a.vcache = newVersionCache(a.cfg.VersionCache)
	defer func() {
		for _, c := range a.conns {
			c.Close(context.Background())
		}
		a.main.Close(context.Background())
	}()
	if a.progress, err = meta.LoadProgress(ctx, a.main); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	known := make([]casualdb.SiteID, 0, len(a.progress))
	a.mu.Lock()
	for o, p := range a.progress {
		a.stats.Origins[o] = OriginStats{Seq: p.Seq, LastCommit: p.CommitTime, LastApplied: p.AppliedAt, Epoch: p.Epoch}
		if o != a.cfg.Site {
			known = append(known, o)
		}
	}
	a.mu.Unlock()

	// The consumers' callbacks end with this run, whatever ends it.
	rctx, cancel := context.WithCancel(ctx)
	in := newIntake(a.cfg.Inbox, pullMsgs)
	in.known = func(o casualdb.SiteID) bool {
		_, applied := a.progress[o]
		return applied || o == a.cfg.Site || (a.cfg.Peers != nil && slices.Contains(a.cfg.Peers(), o))
	}
	var lastStrangers time.Time
	defer func() {
		cancel()
		in.stop()
	}()
	if a.cfg.Peers != nil {
		known = append(known, a.cfg.Peers()...)
	}
	if err := in.discover(rctx, known); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	// Work arrives through in.wake; the tick only paces retries (a failed
	// run waits a second) and the periodic chores. Each tick wakes an idle
	// sidecar: four a second were a tenth of its idle CPU.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastDiscover, lastKeepAlive, lastPeers := time.Now(), time.Now(), time.Now()
	decode := func(m *casualdb.InboxMsg, d *delivery) ([]inMsg, error) { return a.decodeMsg(ctx, m, d) }
	for {
		if now := time.Now(); now.Sub(lastDiscover) >= discoverEvery {
			// An origin that is not a peer (a hint's, say): its first
			// transactions wait at most discoverEvery.
			if err := in.discover(rctx, nil); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
			lastDiscover = now
			a.count(func(s *Stats) { s.Strangers = uint64(in.waiting) })
			if in.waiting > 0 && now.Sub(lastStrangers) >= time.Minute {
				a.log.Warn("inbox messages of origins that are neither peers nor applied before wait unread: apply reads at most this many such origins",
					"waiting_origins", in.waiting, "read", maxStrangers)
				lastStrangers = now
			}
		}
		if now := time.Now(); a.cfg.Peers != nil && now.Sub(lastPeers) >= peersEvery {
			// A peer is read from (about) the moment it is known.
			if err := in.ensure(rctx, a.cfg.Peers()); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
			lastPeers = now
		}
		if err := in.take(decode); err != nil {
			return err
		}
		progressed, err := a.applyReady(ctx, in)
		if err != nil {
			return err
		}
		a.noteHeld(in)
		if now := time.Now(); now.Sub(lastKeepAlive) >= time.Second {
			in.keepAlive(now)
			lastKeepAlive = now
		}
		if progressed {
			continue
		}
		select {
		case <-in.wake:
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// discoverEvery is how often apply looks for origins it has no consumer
// for: an origin's first transactions wait at most this long.
const discoverEvery = 5 * time.Second

// peersEvery is how often apply asks the sidecar for its peers.
const peersEvery = 100 * time.Millisecond

// noteHeld publishes how many transactions each origin holds.
func (a *Applier) noteHeld(in *intake) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, q := range in.order {
		if o := a.stats.Origins[q.origin]; o.Held != len(q.held) {
			o.Held = len(q.held)
			a.stats.Origins[q.origin] = o
		}
	}
}

// policy returns the delete policy of table.
func (a *Applier) policy(table string) conflict.DeletePolicy {
	if p, ok := a.cfg.Policies[table]; ok {
		return p
	}
	return a.cfg.DeletePolicy
}

// Hinter keeps what this site receives as hints for sites that are down.
// The sidecar implements it with the ring and gossip membership.
type Hinter interface {
	// Hint is called, never concurrently, for every transaction taken from
	// the inbox (duplicates included), before it is applied; it returns
	// once any hint it keeps is durable. An error hands the transaction
	// back to the inbox.
	Hint(ctx context.Context, r Received) error
}

// Received is a transaction as it arrived from its origin.
type Received struct {
	Origin casualdb.SiteID
	Epoch  string
	Seq    uint64
	Tx     *casualdb.Tx
	Data   []byte // encoded as shipped
	// Proof and Cert show that Origin signed Data (casualdb.InboxTx.Proof,
	// casualdb.InboxMsg.Cert); nil when it did not.
	Proof, Cert []byte
}
