package node

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/hint"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/ring"
	"github.com/casualdb/casualdb/ship"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// Node is one running casualdb: capture, ship, apply and admin for one site.
type Node struct {
	cfg Config
	log *slog.Logger

	tables   []capture.Table
	server   *ship.Server
	nc       *nats.Conn
	outbox   *ship.Outbox
	inbox    *ship.Inbox
	capturer *capture.Capturer
	applier  *apply.Applier
	member   *ring.Membership // nil without cluster.bind
	keeper   *hint.Keeper     // nil without cluster.bind
	admin    net.Listener
	// natsTLS is the TLS of every connection to a NATS server (nil: plain).
	natsTLS *tls.Config
	// adminToken is the bearer token of the admin endpoint ("": none).
	adminToken string
	delays     *prometheus.HistogramVec // commit at the origin to each stage

	// peerMu guards shippers and group: peers learned by gossip are added
	// while the sidecar runs.
	peerMu   sync.Mutex
	shippers map[casualdb.SiteID]*ship.Shipper
	group    *errgroup.Group // Run's group, to start the shippers of new peers
	groupCtx context.Context

	mu                     sync.Mutex
	health                 map[string]error // component -> last error (nil: running)
	slotLag                int64
	outboxMsg              uint64
	inboxMsg               uint64
	gcRuns                 uint64            // tombstone collections run
	durableSeq, durableLSN uint64            // W-durable watermark last saved
	collected              uint64            // tombstones collected
	durableWake            chan struct{}     // a peer acknowledged something (durability.go)
	ae                     AntiEntropyStatus // background checks (check.go)
	started                time.Time
}

// New validates cfg.
func New(cfg Config, log *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Node{cfg: cfg, log: log.With("site", cfg.Site), health: map[string]error{}, shippers: map[casualdb.SiteID]*ship.Shipper{},
		durableWake: make(chan struct{}, 1),
		delays: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "casualdb_delay_seconds",
			Help:    "Time from a transaction's commit at its origin to a stage: decoded (capture holds it whole, from the slot), captured (durable in the origin's outbox), shipped_<peer> (the peer's inbox holds it), received (taken from the inbox here), applied (committed here). Includes clock differences between sites.",
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
	if err := capture.CheckTablePrivileges(ctx, conn, tables); err != nil {
		return nil, err
	}
	if err := meta.Install(ctx, conn); err != nil {
		return nil, err
	}
	if err := capture.EnsurePublication(ctx, conn, cfg.Database.Publication, published(tables)); err != nil {
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
func (s *Node) Start(ctx context.Context) (err error) {
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
	var serverTLS *tls.Config
	if s.cfg.NATS.TLS.On() {
		if serverTLS, err = certs.ServerConfig(s.cfg.NATS.TLS.Files()); err != nil {
			return fmt.Errorf("%w: nats.tls: %v", casualdb.ErrConfig, err)
		}
		if s.natsTLS, err = certs.ClientConfig(s.cfg.NATS.TLS.Files()); err != nil {
			return fmt.Errorf("%w: nats.tls: %v", casualdb.ErrConfig, err)
		}
	}
	// Relays of this site's transactions (hints its peers keep) carry its
	// signature: with the embedded server the certificate must name the
	// site anyway (peers take its identity from it).
	signer, serr := ship.NewSigner(s.natsTLS, casualdb.SiteID(s.cfg.Site))
	switch {
	case serr != nil && s.cfg.NATS.URL == "":
		return serr
	case serr != nil:
		s.log.Warn("this site's transactions go unsigned: peers with TLS will refuse relays of them (hinted hand-off)", "err", serr)
	}
	url := s.cfg.NATS.URL
	if url == "" {
		s.server, err = ship.StartServer(ship.ServerConfig{
			Listen: s.cfg.NATS.Listen, StoreDir: filepath.Join(s.cfg.DataDir, "nats"), SyncAlways: s.cfg.NATS.SyncAlways, Logger: s.log, TLS: serverTLS,
			Site: casualdb.SiteID(s.cfg.Site),
		})
		if err != nil {
			return err
		}
		url = s.server.ClientURL()
	}
	opts := []nats.Option{nats.Name("casualdb-" + s.cfg.Site), nats.Timeout(5 * time.Second), nats.MaxReconnects(-1)}
	if s.server != nil {
		// In process, no socket: nothing to encrypt, and the server knows
		// the connection for the sidecar's own (see ship.PeerPermissions).
		opts = append(opts, s.server.InProcess())
		// A tls:// URL would make the client speak TLS in process too.
		url = "nats://" + strings.TrimPrefix(strings.TrimPrefix(url, "tls://"), "nats://")
	} else {
		opts = append(opts, ship.Secure(s.natsTLS)...)
		switch {
		case s.cfg.NATS.Creds != "":
			opts = append(opts, nats.UserCredentials(s.cfg.NATS.Creds))
		case s.cfg.NATS.NKeySeedFile != "":
			o, err := nats.NkeyOptionFromSeed(s.cfg.NATS.NKeySeedFile)
			if err != nil {
				return fmt.Errorf("%w: nats.nkey_seed_file: %v", casualdb.ErrConfig, err)
			}
			opts = append(opts, o)
		}
	}
	if s.nc, err = nats.Connect(url, opts...); err != nil {
		return fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	site := casualdb.SiteID(s.cfg.Site)
	if s.outbox, err = ship.OpenOutbox(ctx, js, ship.OutboxConfig{Site: site, MaxBytes: s.cfg.NATS.OutboxMaxBytes, Signer: signer}); err != nil {
		return err
	}
	if s.inbox, err = ship.OpenInbox(ctx, js, site); err != nil {
		return err
	}
	s.inbox.VerifyRelays(ship.NewRelayVerifier(s.natsTLS))
	var hints *hint.Store
	if s.cfg.Cluster.Bind != "" {
		if hints, err = hint.Open(ctx, js, site); err != nil {
			return err
		}
		// Hints are relayed with their origins' proofs.
		s.inbox.KeepProofs(s.log)
	}
	// Every peer the outbox kept transactions for (some learned by gossip
	// in an earlier run), then the configured ones, whose URLs win. Before
	// capture appends anything: the outbox keeps all for a peer that never
	// connected yet.
	known, err := s.outbox.Peers(ctx)
	if err != nil {
		return err
	}
	for _, p := range s.cfg.Peers {
		known[casualdb.SiteID(p.Name)] = p.NATSURL
	}
	for peer, url := range known {
		if url == "" {
			s.log.Warn("the outbox keeps transactions for a peer whose address is unknown until gossip tells it", "peer", peer)
		}
		if err := s.addPeer(ctx, peer, url); err != nil {
			return err
		}
	}
	if s.capturer, err = capture.New(capture.Config{
		Site: site, DSN: s.cfg.Database.DSN, Slot: s.cfg.SlotName(), Publication: s.cfg.Database.Publication,
		Outbox: s.outbox, MaxBatch: s.cfg.Capture.MaxBatch, Linger: s.cfg.Capture.Linger, Logger: s.log, Counters: s.cfg.Conflicts.Counters(), MergeColumns: s.cfg.Conflicts.MergeColumns(),
		ObserveDelay: func(stage string, d time.Duration) { s.delays.WithLabelValues(s.cfg.Site, stage).Observe(d.Seconds()) },
	}); err != nil {
		return err
	}
	for _, subj := range ship.ResendSubjects(site) {
		if _, err := s.nc.Subscribe(subj, s.onResend); err != nil {
			return fmt.Errorf("subscribe to resend requests: %w", err)
		}
	}
	if s.adminToken, err = s.cfg.Admin.BearerToken(); err != nil {
		return err
	}
	if s.cfg.Admin.Listen != "" {
		if s.admin, err = net.Listen("tcp", s.cfg.Admin.Listen); err != nil {
			return fmt.Errorf("admin.listen %s: %w", s.cfg.Admin.Listen, err)
		}
		if c := s.cfg.Admin.TLS; c.Cert != "" {
			cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
			if err != nil {
				return fmt.Errorf("%w: admin.tls: %v", casualdb.ErrConfig, err)
			}
			s.admin = tls.NewListener(s.admin, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		}
	}
	if s.cfg.Cluster.Bind != "" {
		adminAddr := ""
		if s.admin != nil {
			adminAddr = s.admin.Addr().String()
		}
		if s.member, err = ring.Join(ring.MemberConfig{
			Site: site, Bind: s.cfg.Cluster.Bind, Advertise: s.cfg.Cluster.Advertise, Join: s.cfg.Cluster.Join,
			SecretKey: s.cfg.Cluster.Key(), Insecure: s.cfg.Cluster.Insecure, PushPull: s.cfg.Cluster.PushPull,
			Meta:  ring.NodeMeta{NATSURL: s.advertisedNATS(), Admin: adminAddr},
			State: s.gossipState, Logger: s.log,
		}); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		if s.keeper, err = hint.New(hint.Config{Site: site, Store: hints, Members: s.member, N: s.cfg.Cluster.N, Retention: s.cfg.Cluster.HintRetention, TLS: s.natsTLS, IDPrefix: s.outbox.IDPrefix,
			Supervise: s.supervise, Logger: s.log}); err != nil {
			return err
		}
	}
	var hinter apply.Hinter
	if s.keeper != nil {
		hinter = s.keeper
	}
	if s.applier, err = apply.New(apply.Config{
		Hinter: hinter, Resend: s.resend, Peers: s.peerList,
		Site: site, DSN: s.cfg.Database.DSN, Inbox: s.inbox, Capture: s.capturer, Tables: s.appliedTables(),
		MaxBatch: s.cfg.Apply.MaxBatch, WaitTimeout: s.cfg.Apply.WaitTimeout, Logger: s.log,
		DeletePolicy: deletePolicy, Policies: policies, MergeColumns: s.cfg.Conflicts.MergeColumns(),
		ObserveDelay: func(origin casualdb.SiteID, stage string, d time.Duration) {
			s.delays.WithLabelValues(string(origin), stage).Observe(d.Seconds())
		},
	}); err != nil {
		return err
	}
	return nil
}

// advertisedNATS is the URL peers publish to this site's inbox at: the
// external NATS when one is configured, else the embedded server's listen
// address, with the gossip address's host when it listens on every
// interface.
func (s *Node) advertisedNATS() string {
	if s.cfg.NATS.URL != "" {
		return s.cfg.NATS.URL
	}
	host, port, _ := net.SplitHostPort(s.cfg.NATS.Listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		adv := s.cfg.Cluster.Advertise
		if adv == "" {
			adv = s.cfg.Cluster.Bind
		}
		host, _, _ = net.SplitHostPort(adv)
	}
	scheme := "nats://"
	if s.cfg.NATS.TLS.On() {
		scheme = "tls://"
	}
	return scheme + net.JoinHostPort(host, port)
}

// addPeer starts shipping to peer at url: a shipper and its durable outbox
// consumer, started at once when the sidecar runs. A known peer only gets
// the new URL.
func (s *Node) addPeer(ctx context.Context, peer casualdb.SiteID, url string) error {
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	if sh, ok := s.shippers[peer]; ok {
		if sh.PeerURL() == url {
			return nil
		}
		s.log.Info("peer's NATS address changed", "peer", peer, "from", sh.PeerURL(), "to", url)
		sh.SetPeerURL(url)
		_, err := sh.EnsureConsumer(ctx) // remembers it
		return err
	}
	stage := "shipped_" + string(peer)
	sh, err := ship.NewShipper(ship.ShipperConfig{Site: casualdb.SiteID(s.cfg.Site), Peer: peer, PeerURL: url, Outbox: s.outbox, MaxBatch: s.cfg.Ship.MaxBatch, Logger: s.log, TLS: s.natsTLS,
		ObserveDelay: func(d time.Duration) { s.delays.WithLabelValues(s.cfg.Site, stage).Observe(d.Seconds()) }, OnAck: s.wakeDurability})
	if err != nil {
		return err
	}
	if _, err := sh.EnsureConsumer(ctx); err != nil {
		return err
	}
	s.shippers[peer] = sh
	if s.group != nil {
		s.log.Info("new peer: shipping to it", "peer", peer, "nats_url", url)
		s.group.Go(func() error { return s.supervise(s.groupCtx, "ship:"+string(peer), sh.Run) })
	}
	return nil
}

// configuredPeer tells whether site is in the peers list of the config.
func (s *Node) configuredPeer(site casualdb.SiteID) bool {
	for _, p := range s.cfg.Peers {
		if casualdb.SiteID(p.Name) == site {
			return true
		}
	}
	return false
}

// peerList returns the peers, sorted.
func (s *Node) peerList() []casualdb.SiteID {
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	out := make([]casualdb.SiteID, 0, len(s.shippers))
	for p := range s.shippers {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// shipper returns the shipper of peer (nil if unknown).
func (s *Node) shipper(peer casualdb.SiteID) *ship.Shipper {
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	return s.shippers[peer]
}

// watchMembers ships to every live site gossip tells of and follows their
// NATS addresses.
func (s *Node) watchMembers(ctx context.Context) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, m := range s.member.Members() {
			if string(m.Site) == s.cfg.Site || m.State != ring.StateAlive || m.Meta.NATSURL == "" || s.configuredPeer(m.Site) {
				continue // a configured peer's nats_url wins over what the site advertises
			}
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := s.addPeer(actx, m.Site, m.Meta.NATSURL)
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("add peer learned by gossip", "peer", m.Site, "err", err)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// Run runs every component until ctx is done. Capture and apply restart
// with back-off after an error (a database restart, say); the admin
// endpoint reports them unhealthy meanwhile.
func (s *Node) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.supervise(ctx, "capture", s.capturer.Run) })
	g.Go(func() error { return s.supervise(ctx, "apply", s.applier.Run) })
	s.peerMu.Lock()
	s.group, s.groupCtx = g, ctx
	for peer, sh := range s.shippers {
		g.Go(func() error { return s.supervise(ctx, "ship:"+string(peer), sh.Run) })
	}
	s.peerMu.Unlock()
	if s.member != nil {
		g.Go(func() error { return s.watchMembers(ctx) })
		g.Go(func() error { return s.keeper.Run(ctx) })
	}
	g.Go(func() error { return s.housekeep(ctx) })
	g.Go(func() error { return s.serveChecks(ctx) })
	if s.cfg.AntiEntropy.Interval > 0 {
		g.Go(func() error { return s.antiEntropy(ctx) })
	}
	g.Go(func() error { return s.durabilityLoop(ctx) })
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
	s.log.Info("casualdb running", "tables", len(s.tables), "peers", len(s.peerList()), "admin", s.cfg.Admin.Listen, "gossip", s.cfg.Cluster.Bind)
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Node) supervise(ctx context.Context, name string, run func(context.Context) error) error {
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

func (s *Node) setHealth(name string, err error) {
	s.mu.Lock()
	s.health[name] = err
	s.mu.Unlock()
}

// quietBeats: an idle site writes its heartbeat once every quietBeats
// intervals (beatDue).
const quietBeats = 30

// beatDue reports whether the site writes its heartbeat at now, the last
// one written at last (zero: none since start). The heartbeat tells the
// peers what this site has applied (its transaction's dependencies), which
// tombstone collection waits for, and the newest sequence of its outbox,
// after which a lost last transaction shows at a peer as a gap (asked for
// again). Those change only when apply applies, or capture ships, a
// transaction that changes more than heartbeats (informing, the sum of
// both counts, against atLast, the sum when the last beat was written). So
// a beat is due at most every interval, and only when informing moved, none
// was written since start, or quietBeats intervals have passed. A heartbeat
// that answered heartbeats would make idle sites beat at each other for
// ever. The quiet beat bounds the rare moves of what this site has seen
// without an informing apply (past a transaction skipped at an outbox epoch
// reset, say): tombstone collection then waits up to quietBeats intervals
// longer.
func beatDue(now, last time.Time, every time.Duration, informing, atLast uint64) bool {
	switch {
	case last.IsZero():
		return true
	case now.Sub(last) < every:
		return false
	default:
		return informing != atLast || now.Sub(last) >= quietBeats*every
	}
}

// housekeep trims the outbox below what every peer and capture have,
// tends the hints (hint.Keeper.Tend), and samples the slot's retained WAL and
// the queues for metrics.
func (s *Node) housekeep(ctx context.Context) error {
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
	var kept retention
	missing := hint.MissingLog{}
	tick := time.NewTicker(min(2*time.Second, s.cfg.GC.Heartbeat, s.cfg.GC.Interval))
	defer tick.Stop()
	var lastBeat, lastGC, lastStats time.Time
	var beatInforming uint64 // capture's and apply's Informing when the last beat was written
	var lastActivity [3]uint64
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if conn == nil || conn.IsClosed() {
			conn, _ = pgx.ConnectConfig(qctx, cfg)
		}
		informing := s.capturer.Stats().Informing
		if s.applier != nil {
			informing += s.applier.Stats().Informing
		}
		if conn != nil && beatDue(time.Now(), lastBeat, s.cfg.GC.Heartbeat, informing, beatInforming) {
			if err := meta.Beat(qctx, conn, casualdb.SiteID(s.cfg.Site)); err != nil {
				s.log.Debug("heartbeat", "err", err)
			} else {
				lastBeat, beatInforming = time.Now(), informing
			}
		}
		// Every peer ever known (the outbox keeps a consumer for each) must
		// have seen a tombstone before it goes.
		peers := s.peerList()
		sites := append([]casualdb.SiteID{casualdb.SiteID(s.cfg.Site)}, peers...)
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
		// The queues' state is read every round while the site is busy, and
		// every idleStatsEvery when nothing moved: an idle site asks its
		// NATS and database next to nothing.
		activity := s.activity()
		busy := activity != lastActivity
		lastActivity = activity
		if busy || time.Since(lastStats) >= idleStatsEvery {
			lastStats = time.Now()
			if conn != nil {
				if lag, err := capture.SlotLag(qctx, conn, s.cfg.SlotName()); err == nil {
					s.mu.Lock()
					s.slotLag = lag
					s.mu.Unlock()
				}
				if st, err := meta.LoadCaptureState(qctx, conn, casualdb.SiteID(s.cfg.Site)); err == nil {
					floor := kept.floor(time.Now(), s.cfg.NATS.OutboxRetention, st.OutboxMsg)
					if err := s.outbox.Trim(qctx, peers, floor); err != nil {
						s.log.Debug("trim outbox", "err", err)
					}
				}
			}
			if conn != nil && s.keeper != nil {
				s.keeper.Tend(ctx, conn)
			}
			if s.keeper != nil && s.applier != nil {
				missing.Update(s.log, s.keeper.Missing(s.applier.Stats().Origins))
			}
			if n, _, err := s.outbox.Pending(qctx); err == nil {
				s.mu.Lock()
				s.outboxMsg = n
				s.mu.Unlock()
			}
			if n, err := s.inbox.Trim(qctx); err == nil {
				s.mu.Lock()
				s.inboxMsg = n
				s.mu.Unlock()
			}
		}
		cancel()
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// idleStatsEvery is how often housekeeping reads the queues' state (and
// trims the outbox, expires hints) when nothing moved since the last round.
const idleStatsEvery = 10 * time.Second

// activity sums up what capture and apply have done so far: unchanged
// between two housekeeping rounds means the site was idle.
func (s *Node) activity() [3]uint64 {
	cs := s.capturer.Stats()
	var applied uint64
	if s.applier != nil {
		as := s.applier.Stats()
		applied = as.Applied + as.Skipped
	}
	return [3]uint64{cs.Processed, cs.LastSeq, applied}
}

// Close releases what Start acquired; safe to call twice.
func (s *Node) Close() {
	if s.member != nil {
		if err := s.member.Close(); err != nil {
			s.log.Warn("leave the cluster", "err", err)
		}
	}
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

// retention remembers how far the outbox had got at each housekeeping round,
// so that trimming keeps what was appended within the retention period.
type retention struct {
	samples []retentionSample
}

type retentionSample struct {
	at  time.Time
	seq uint64
}

// floor records that the outbox holds up to seq now and returns the highest
// sequence that was already there keep ago (0 while the sidecar has run for
// less than keep: nothing may go yet). keep 0 returns seq.
func (r *retention) floor(now time.Time, keep time.Duration, seq uint64) uint64 {
	if keep <= 0 {
		return seq
	}
	r.samples = append(r.samples, retentionSample{at: now, seq: seq})
	// Drop the samples made obsolete by a newer one that is old enough.
	i := 0
	for i+1 < len(r.samples) && !r.samples[i+1].at.After(now.Add(-keep)) {
		i++
	}
	r.samples = r.samples[i:]
	if r.samples[0].at.After(now.Add(-keep)) {
		return 0
	}
	return r.samples[0].seq
}

// resend asks origin's sidecar to ship to this site again from sequence
// from (apply waited too long for it).
func (s *Node) resend(ctx context.Context, origin casualdb.SiteID, from uint64) error {
	sh := s.shipper(origin)
	if sh == nil {
		return fmt.Errorf("origin %s: its NATS address is unknown here", origin)
	}
	return ship.RequestResend(ctx, sh.PeerURL(), origin, casualdb.SiteID(s.cfg.Site), from, ship.PeerOptions(s.natsTLS, casualdb.SiteID(s.cfg.Site))...)
}

// onResend answers a peer's request to ship to it again. Called on the NATS
// client's goroutine: it only flags the shipper.
func (s *Node) onResend(m *nats.Msg) {
	if !ship.SafeReply(m.Reply) {
		s.log.Warn("a resend request with a reply subject that is no inbox: ignored", "reply", m.Reply)
		return
	}
	var req ship.ResendRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || req.Peer == "" {
		_ = m.Respond([]byte("bad request"))
		return
	}
	if asker := ship.ResendAsker(m.Subject); asker != "" && asker != req.Peer {
		// With TLS the subject is the asker's identity: a site asks for
		// itself only.
		s.log.Warn("a resend request for another peer: refused", "asker", asker, "for", req.Peer)
		_ = m.Respond([]byte("refused: " + string(asker) + " may ask only for itself"))
		return
	}
	sh := s.shipper(req.Peer)
	if sh == nil {
		_ = m.Respond([]byte("unknown peer " + string(req.Peer)))
		return
	}
	acked := sh.Acked()
	if acked == 0 && req.From > 1 {
		// Not known yet (the shipper starts from the consumer's floor):
		// the peer asks again later.
		_ = m.Respond([]byte("not ready: what " + string(req.Peer) + " acknowledged is not known yet"))
		return
	}
	from, clamped := clampResend(req.From, acked)
	if clamped {
		s.log.Warn("a resend request asks for more than the peer has acknowledged; shipping from its acknowledged position", "peer", req.Peer, "asked", req.From, "from", from)
	}
	sh.Rewind(from)
	_ = m.Respond([]byte("ok"))
}

// clampResend bounds a resend request's from by what the peer has
// acknowledged: shipping again from further on would skip transactions the
// peer never had (which the outbox would then trim).
func clampResend(from, acked uint64) (uint64, bool) {
	if from > acked+1 {
		return acked + 1, true
	}
	return from, false
}

// published are the tables a site publishes, and so the only ones apply
// may write: the replicated ones and the heartbeat table, which replicates
// too (meta.Beat).
func published(tables []capture.Table) []capture.Table {
	return append(slices.Clip(tables), capture.Table{Schema: meta.Schema, Name: meta.HeartbeatName})
}

// appliedTables are the tables apply may write (published).
func (s *Node) appliedTables() []apply.TableID {
	var out []apply.TableID
	for _, t := range published(s.tables) {
		out = append(out, apply.TableID{Schema: t.Schema, Name: t.Name})
	}
	return out
}
