package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/ship"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// Sidecar is one running casualdb: capture, ship, apply and admin for one site.
type Sidecar struct {
	cfg Config
	log *slog.Logger

	tables   []capture.Table
	server   *ship.Server
	nc       *nats.Conn
	outbox   *ship.Outbox
	inbox    *ship.Inbox
	capturer *capture.Capturer
	applier  *apply.Applier
	shippers map[casualdb.SiteID]*ship.Shipper
	admin    net.Listener
	delays   *prometheus.HistogramVec // commit at the origin to each stage

	mu        sync.Mutex
	health    map[string]error // component -> last error (nil: running)
	slotLag   int64
	outboxMsg uint64
	inboxMsg  uint64
	gcRuns    uint64 // tombstone collections run
	collected uint64 // tombstones collected
	started   time.Time
}

// NewSidecar validates cfg.
func NewSidecar(cfg Config, log *slog.Logger) (*Sidecar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sidecar{cfg: cfg, log: log.With("site", cfg.Site), health: map[string]error{}, shippers: map[casualdb.SiteID]*ship.Shipper{},
		delays: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "casualdb_delay_seconds",
			Help:    "Time from a transaction's commit at its origin to a stage: captured (durable in the origin's outbox), shipped_<peer> (the peer's inbox holds it), received (taken from the inbox here), applied (committed here). Includes clock differences between sites.",
			Buckets: []float64{.001, .0025, .005, .01, .015, .02, .03, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"origin", "stage"}),
	}, nil
}

// Prepare checks and prepares the database: settings, tables, the casualdb
// schema, publication, slot and replication origins. Idempotent.
func Prepare(ctx context.Context, cfg Config, log *slog.Logger) ([]capture.Table, error) {
	cctx, cancel := context.WithTimeout(ctx, cfg.Database.ConnectTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, cfg.Database.DSN)
	if err != nil {
		return nil, fmt.Errorf("connect to database (database.dsn): %w", err)
	}
	defer conn.Close(context.Background())
	if err := capture.CheckSettings(ctx, conn); err != nil {
		return nil, err
	}
	tables, err := capture.ResolveTables(ctx, conn, cfg.Database.Tables, log)
	if err != nil {
		return nil, err
	}
	if err := meta.Install(ctx, conn); err != nil {
		return nil, err
	}
	// The heartbeat table replicates too (see meta.Beat).
	published := append(slices.Clip(tables), capture.Table{Schema: meta.Schema, Name: "heartbeat"})
	if err := capture.EnsurePublication(ctx, conn, cfg.Database.Publication, published); err != nil {
		return nil, err
	}
	if cfg.Database.ToastFullIdentity {
		for _, t := range tables {
			if err := capture.EnsureToastIdentity(ctx, conn, t, log); err != nil {
				return nil, err
			}
		}
	}
	counters, merge := cfg.Conflicts.Counters(), cfg.Conflicts.MergeColumns()
	for name := range cfg.Conflicts.Tables {
		tbl, _ := capture.ParseTable(name)
		name := tbl.String()
		if !slices.ContainsFunc(tables, func(t capture.Table) bool { return t.String() == name }) {
			return nil, fmt.Errorf("%w: conflicts.tables: %s is not a replicated table (see database.tables)", casualdb.ErrConfig, name)
		}
		if len(counters[name]) == 0 && !merge[name] {
			continue
		}
		if err := capture.EnsureCounters(ctx, conn, name, counters[name], log); err != nil {
			return nil, err
		}
	}
	if err := capture.EnsureSlot(ctx, conn, cfg.SlotName()); err != nil {
		return nil, err
	}
	for _, p := range cfg.Peers {
		if err := apply.EnsureOrigin(ctx, conn, apply.OriginName(casualdb.SiteID(p.Name))); err != nil {
			return nil, err
		}
	}
	return tables, nil
}

// Start prepares everything that can fail on bad input (database, NATS,
// admin port), so that Run only runs.
func (s *Sidecar) Start(ctx context.Context) (err error) {
	s.started = time.Now()
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.tables, err = Prepare(ctx, s.cfg, s.log); err != nil {
		return err
	}
	deletePolicy, policies := s.cfg.Conflicts.DeletePolicies() // tables checked by Prepare
	url := s.cfg.NATS.URL
	if url == "" {
		s.server, err = ship.StartServer(ship.ServerConfig{
			Listen: s.cfg.NATS.Listen, StoreDir: filepath.Join(s.cfg.DataDir, "nats"), SyncAlways: s.cfg.NATS.SyncAlways, Logger: s.log,
		})
		if err != nil {
			return err
		}
		url = s.server.ClientURL()
	}
	opts := []nats.Option{nats.Name("casualdb-" + s.cfg.Site), nats.Timeout(5 * time.Second), nats.MaxReconnects(-1)}
	if s.server != nil {
		opts = append(opts, s.server.InProcess())
	}
	if s.nc, err = nats.Connect(url, opts...); err != nil {
		return fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	site := casualdb.SiteID(s.cfg.Site)
	if s.outbox, err = ship.OpenOutbox(ctx, js, ship.OutboxConfig{Site: site, MaxBytes: s.cfg.NATS.OutboxMaxBytes}); err != nil {
		return err
	}
	if s.inbox, err = ship.OpenInbox(ctx, js, site); err != nil {
		return err
	}
	for _, p := range s.cfg.Peers {
		stage := "shipped_" + p.Name
		sh, err := ship.NewShipper(ship.ShipperConfig{Site: site, Peer: casualdb.SiteID(p.Name), PeerURL: p.NATSURL, Outbox: s.outbox, Logger: s.log,
			ObserveDelay: func(d time.Duration) { s.delays.WithLabelValues(s.cfg.Site, stage).Observe(d.Seconds()) }})
		if err != nil {
			return err
		}
		// Before capture appends anything: the outbox keeps all for a peer
		// that never connected yet.
		if _, err := sh.EnsureConsumer(ctx); err != nil {
			return err
		}
		s.shippers[casualdb.SiteID(p.Name)] = sh
	}
	if s.capturer, err = capture.New(capture.Config{
		Site: site, DSN: s.cfg.Database.DSN, Slot: s.cfg.SlotName(), Publication: s.cfg.Database.Publication,
		Outbox: s.outbox, Logger: s.log, Counters: s.cfg.Conflicts.Counters(), MergeColumns: s.cfg.Conflicts.MergeColumns(),
		ObserveDelay: func(d time.Duration) { s.delays.WithLabelValues(s.cfg.Site, "captured").Observe(d.Seconds()) },
	}); err != nil {
		return err
	}
	if s.applier, err = apply.New(apply.Config{
		Site: site, DSN: s.cfg.Database.DSN, Inbox: s.inbox.Consumer(), Capture: s.capturer,
		MaxBatch: s.cfg.Apply.MaxBatch, WaitTimeout: s.cfg.Apply.WaitTimeout, Logger: s.log,
		DeletePolicy: deletePolicy, Policies: policies, MergeColumns: s.cfg.Conflicts.MergeColumns(),
		ObserveDelay: func(origin casualdb.SiteID, stage string, d time.Duration) {
			s.delays.WithLabelValues(string(origin), stage).Observe(d.Seconds())
		},
	}); err != nil {
		return err
	}
	if s.cfg.Admin.Listen != "" {
		if s.admin, err = net.Listen("tcp", s.cfg.Admin.Listen); err != nil {
			return fmt.Errorf("admin.listen %s: %w", s.cfg.Admin.Listen, err)
		}
	}
	return nil
}

// Run runs every component until ctx is done. Capture and apply restart
// with back-off after an error (a database restart, say); the admin
// endpoint reports them unhealthy meanwhile.
func (s *Sidecar) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.supervise(ctx, "capture", s.capturer.Run) })
	g.Go(func() error { return s.supervise(ctx, "apply", s.applier.Run) })
	for peer, sh := range s.shippers {
		sh := sh
		g.Go(func() error { return s.supervise(ctx, "ship:"+string(peer), sh.Run) })
	}
	g.Go(func() error { return s.housekeep(ctx) })
	if s.admin != nil {
		srv := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(s.admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	s.log.Info("casualdb running", "tables", len(s.tables), "peers", len(s.cfg.Peers), "admin", s.cfg.Admin.Listen)
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Sidecar) supervise(ctx context.Context, name string, run func(context.Context) error) error {
	backoff := 200 * time.Millisecond
	for {
		s.setHealth(name, nil)
		start := time.Now()
		err := run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("stopped")
		}
		s.setHealth(name, err)
		if time.Since(start) > time.Minute {
			backoff = 200 * time.Millisecond
		}
		s.log.Error("component failed; restarting", "component", name, "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (s *Sidecar) setHealth(name string, err error) {
	s.mu.Lock()
	s.health[name] = err
	s.mu.Unlock()
}

// housekeep trims the outbox below what every peer and capture have, and
// samples the slot's retained WAL and the queues for metrics.
func (s *Sidecar) housekeep(ctx context.Context) error {
	peers := make([]casualdb.SiteID, 0, len(s.shippers))
	for p := range s.shippers {
		peers = append(peers, p)
	}
	cfg, err := pgx.ParseConfig(s.cfg.Database.DSN)
	if err != nil {
		return fmt.Errorf("housekeeping: %w", err)
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	sites := []casualdb.SiteID{casualdb.SiteID(s.cfg.Site)}
	for _, p := range s.cfg.Peers {
		sites = append(sites, casualdb.SiteID(p.Name))
	}
	tick := time.NewTicker(min(2*time.Second, s.cfg.GC.Heartbeat, s.cfg.GC.Interval))
	defer tick.Stop()
	var lastBeat, lastGC time.Time
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if conn == nil || conn.IsClosed() {
			conn, _ = pgx.ConnectConfig(qctx, cfg)
		}
		if conn != nil && time.Since(lastBeat) >= s.cfg.GC.Heartbeat {
			if err := meta.Beat(qctx, conn, casualdb.SiteID(s.cfg.Site)); err != nil {
				s.log.Debug("heartbeat", "err", err)
			} else {
				lastBeat = time.Now()
			}
		}
		if conn != nil && time.Since(lastGC) >= s.cfg.GC.Interval {
			n, err := meta.CollectTombstones(qctx, conn, sites, casualdb.SiteID(s.cfg.Site))
			if err != nil {
				s.log.Warn("tombstone collection", "err", err)
			} else {
				lastGC = time.Now()
				s.mu.Lock()
				s.gcRuns++
				s.collected += uint64(n)
				s.mu.Unlock()
				if n > 0 {
					s.log.Debug("collected tombstones every site has seen", "rows", n)
				}
				if n, err := meta.TrimConflictLog(qctx, conn, s.cfg.Conflicts.LogRetention); err != nil {
					s.log.Warn("trim conflict log", "err", err)
				} else if n > 0 {
					s.log.Info("trimmed the conflict log", "rows", n, "older_than", s.cfg.Conflicts.LogRetention)
				}
			}
		}
		if conn != nil {
			if lag, err := capture.SlotLag(qctx, conn, s.cfg.SlotName()); err == nil {
				s.mu.Lock()
				s.slotLag = lag
				s.mu.Unlock()
			}
			if st, err := meta.LoadCaptureState(qctx, conn, casualdb.SiteID(s.cfg.Site)); err == nil {
				if err := s.outbox.Trim(qctx, peers, st.OutboxSeq); err != nil {
					s.log.Debug("trim outbox", "err", err)
				}
			}
		}
		if n, _, err := s.outbox.Pending(qctx); err == nil {
			s.mu.Lock()
			s.outboxMsg = n
			s.mu.Unlock()
		}
		if n, err := s.inbox.Pending(qctx); err == nil {
			s.mu.Lock()
			s.inboxMsg = n
			s.mu.Unlock()
		}
		cancel()
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// Close releases what Start acquired; safe to call twice.
func (s *Sidecar) Close() {
	if s.capturer != nil {
		s.capturer.Close()
	}
	if s.admin != nil {
		s.admin.Close()
		s.admin = nil
	}
	if s.nc != nil {
		s.nc.Close()
		s.nc = nil
	}
	if s.server != nil {
		s.server.Close()
		s.server = nil
	}
}
