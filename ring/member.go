package ring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/hashicorp/memberlist"
)

// NodeMeta is what a site gossips about itself so that peers can reach it.
// memberlist limits it to 512 bytes encoded.
type NodeMeta struct {
	NATSURL string `json:"n"`           // where peers publish to this site's inbox
	Admin   string `json:"a,omitempty"` // its admin endpoint (status, metrics)
}

// DefaultPushPull is MemberConfig.PushPull's default.
const DefaultPushPull = 5 * time.Second

// MemberConfig configures a Membership.
type MemberConfig struct {
	// Site is this site's name, also its gossip node name. Required.
	Site casualdb.SiteID
	// Bind is the host:port gossip listens on (TCP and UDP). Required.
	Bind string
	// Advertise is the host:port peers reach this site's gossip at.
	// Default Bind (which then must not be a wildcard address).
	Advertise string
	// Join lists gossip addresses of other sites; one live one is enough.
	// Joining is retried with back-off until one answers, so sites may start
	// in any order. Empty: this site waits for others to join it.
	Join []string
	// SecretKey encrypts gossip (AES, 16, 24 or 32 bytes). Nil: plain text,
	// which Insecure must allow unless Bind and Advertise are loopback.
	SecretKey []byte
	// Insecure allows unencrypted gossip on non-loopback addresses.
	Insecure bool
	// Meta is gossiped to every peer.
	Meta NodeMeta
	// State returns this site's digest for the periodic full-state exchange
	// (its progress from every origin). Called from memberlist's goroutines,
	// concurrently with everything else: it must be quick and must not block.
	// Nil: none.
	State func() []byte
	// PushPull is the interval of full-state exchanges with a random peer.
	// Default DefaultPushPull.
	PushPull time.Duration
	// Local selects memberlist's loopback timings (fast failure detection),
	// for tests and single-machine clusters. Default: LAN timings.
	Local bool
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// MemberState is what this site believes of another.
type MemberState string

// The states a member can be in.
const (
	StateAlive   MemberState = "alive"
	StateSuspect MemberState = "suspect"
	StateDead    MemberState = "dead" // failed: stopped answering probes
	StateLeft    MemberState = "left" // left the cluster on purpose
)

// Member is one site as this site sees it.
type Member struct {
	Site  casualdb.SiteID
	Addr  string // gossip address
	Meta  NodeMeta
	State MemberState
	Since time.Time // when this site last saw the state change
}

// Membership is this site's view of the cluster, kept by gossip. Start it
// with Join; Close leaves the cluster and stops it.
type Membership struct {
	cfg  MemberConfig
	log  *slog.Logger
	list *memberlist.Memberlist

	mu      sync.Mutex
	members map[casualdb.SiteID]*Member
	states  map[casualdb.SiteID][]byte
	leaving map[casualdb.SiteID]bool // said they are leaving
	sites   uint64                   // bumped when a site is first heard of
	joined  bool

	joinAttempts atomic.Int32 // for tests: how often joinLoop tried

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// ErrInsecureGossip is returned for unencrypted gossip on a non-loopback
// address without MemberConfig.Insecure.
var ErrInsecureGossip = errors.New("gossip on a non-loopback address needs a secret key (or insecure: true)")

// Join validates cfg, starts gossip and returns at once; joining the sites
// in cfg.Join goes on in the background until one answers.
func Join(cfg MemberConfig) (*Membership, error) {
	if cfg.Site == "" || cfg.Bind == "" {
		return nil, fmt.Errorf("%w: membership needs a site name and a bind address", casualdb.ErrConfig)
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.Bind
	}
	bindHost, bindPort, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("%w: cluster bind %q: %v", casualdb.ErrConfig, cfg.Bind, err)
	}
	advHost, advPort, err := splitHostPort(cfg.Advertise)
	if err != nil {
		return nil, fmt.Errorf("%w: cluster advertise %q: %v", casualdb.ErrConfig, cfg.Advertise, err)
	}
	if ip := net.ParseIP(advHost); ip == nil || ip.IsUnspecified() {
		return nil, fmt.Errorf("%w: cluster advertise %q: want the IP address peers reach this site at", casualdb.ErrConfig, cfg.Advertise)
	}
	switch len(cfg.SecretKey) {
	case 0:
		if !cfg.Insecure && !(isLoopback(bindHost) && isLoopback(advHost)) {
			return nil, fmt.Errorf("%w: %w (bind %s)", casualdb.ErrConfig, ErrInsecureGossip, cfg.Bind)
		}
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("%w: cluster secret key: %d bytes, want 16, 24 or 32", casualdb.ErrConfig, len(cfg.SecretKey))
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil || len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: node metadata of %s: %d bytes, at most %d", casualdb.ErrConfig, cfg.Site, len(meta), memberlist.MetaMaxSize)
	}
	if cfg.PushPull <= 0 {
		cfg.PushPull = DefaultPushPull
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Membership{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "gossip"),
		members: map[casualdb.SiteID]*Member{},
		states:  map[casualdb.SiteID][]byte{},
		leaving: map[casualdb.SiteID]bool{},
	}
	mc := memberlist.DefaultLANConfig()
	if cfg.Local {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = string(cfg.Site)
	mc.BindAddr, mc.BindPort = bindHost, bindPort
	mc.AdvertiseAddr, mc.AdvertisePort = advHost, advPort
	mc.SecretKey = cfg.SecretKey
	mc.PushPullInterval = cfg.PushPull
	mc.Delegate = &delegate{m: m, meta: meta}
	mc.Events = &events{m: m}
	mc.Logger = log.New(&logWriter{log: m.log}, "", 0)
	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Bind, err)
	}
	m.list = list
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.joinLoop(ctx)
	}()
	return m, nil
}

// joinLoop joins the configured sites, retrying with back-off until one
// answers or the membership closes.
func (m *Membership) joinLoop(ctx context.Context) {
	if len(m.cfg.Join) == 0 {
		return
	}
	backoff := 200 * time.Millisecond
	for {
		n, err := m.list.Join(m.cfg.Join)
		m.joinAttempts.Add(1)
		if n > 0 {
			m.mu.Lock()
			m.joined = true
			m.mu.Unlock()
			m.log.Info("joined the cluster", "via", m.cfg.Join, "members", m.list.NumMembers())
			return
		}
		m.log.Warn("no site to join answered; retrying", "join", m.cfg.Join, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// Members returns every site this site has heard of, itself included,
// sorted by name, with what it believes of each.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mb := range m.members {
		out = append(out, *mb)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(string(a.Site), string(b.Site)) })
	return out
}

// Alive reports whether site is a live member (alive or suspect: a suspect
// has not been declared failed yet).
func (m *Membership) Alive(site casualdb.SiteID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb, ok := m.members[site]
	return ok && (mb.State == StateAlive || mb.State == StateSuspect)
}

// Generation changes whenever a site is heard of for the first time, so
// that callers can keep what they derive from the member list (a ring)
// until it changes.
func (m *Membership) Generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sites
}

// AllAlive reports whether every site heard of is alive or suspect: the
// common case, checked without copying the member list.
func (m *Membership) AllAlive() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mb := range m.members {
		if mb.State != StateAlive && mb.State != StateSuspect {
			return false
		}
	}
	return true
}

// RemoteState returns the last digest site sent in a full-state exchange
// (nil if none yet).
func (m *Membership) RemoteState(site casualdb.SiteID) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.states[site])
}

// Close leaves the cluster (telling the others, for at most 2s) and stops
// gossip. It is safe to call twice.
func (m *Membership) Close() error {
	m.closeOnce.Do(func() {
		m.cancel()
		m.wg.Wait()
		for _, n := range m.list.Members() {
			if n.Name != string(m.cfg.Site) {
				// Best effort: a peer that misses it sees a failure instead.
				_ = m.list.SendReliable(n, []byte(leavingMsg+string(m.cfg.Site)))
			}
		}
		if err := m.list.Leave(2 * time.Second); err != nil {
			m.log.Warn("leave the cluster", "err", err)
		}
		m.closeErr = m.list.Shutdown()
	})
	return m.closeErr
}

func (m *Membership) setState(n *memberlist.Node, state MemberState) {
	var meta NodeMeta
	if len(n.Meta) > 0 {
		if err := json.Unmarshal(n.Meta, &meta); err != nil {
			m.log.Warn("undecodable node metadata", "site", n.Name, "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	site := casualdb.SiteID(n.Name)
	mb, ok := m.members[site]
	if !ok {
		mb = &Member{Site: site}
		m.members[site] = mb
		m.sites++
	}
	if mb.State != state {
		mb.Since = time.Now()
	}
	mb.Addr, mb.Meta, mb.State = n.Address(), meta, state
}

// delegate answers memberlist's questions; every method is called from
// memberlist's goroutines and must not block.
type delegate struct {
	m    *Membership
	meta []byte
}

var _ memberlist.Delegate = (*delegate)(nil)

func (d *delegate) NodeMeta(limit int) []byte { return d.meta }

// leavingMsg is sent to every live member by a site that closes, so that
// they tell a site that left from one that failed (memberlist's leave
// notification does not say which).
const leavingMsg = "casualdb-leaving:"

func (d *delegate) NotifyMsg(b []byte) {
	if site, ok := strings.CutPrefix(string(b), leavingMsg); ok {
		d.m.mu.Lock()
		d.m.leaving[casualdb.SiteID(site)] = true
		d.m.mu.Unlock()
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// stateMsg is the full-state exchange: the sender's name and digest.
type stateMsg struct {
	Site  casualdb.SiteID `json:"s"`
	State json.RawMessage `json:"d,omitempty"`
}

func (d *delegate) LocalState(join bool) []byte {
	msg := stateMsg{Site: d.m.cfg.Site}
	if d.m.cfg.State != nil {
		msg.State = d.m.cfg.State()
	}
	b, err := json.Marshal(msg)
	if err != nil {
		d.m.log.Warn("encode local state", "err", err)
		return nil
	}
	return b
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	var msg stateMsg
	if err := json.Unmarshal(buf, &msg); err != nil || msg.Site == "" {
		d.m.log.Warn("undecodable state from a peer", "err", err)
		return
	}
	if msg.Site == d.m.cfg.Site {
		return
	}
	d.m.mu.Lock()
	d.m.states[msg.Site] = slices.Clone([]byte(msg.State))
	d.m.mu.Unlock()
}

// events records membership changes; called from memberlist's goroutines,
// must not block.
type events struct{ m *Membership }

var _ memberlist.EventDelegate = (*events)(nil)

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.m.mu.Lock()
	delete(e.m.leaving, casualdb.SiteID(n.Name))
	e.m.mu.Unlock()
	e.m.setState(n, StateAlive)
	if n.Name != string(e.m.cfg.Site) {
		e.m.log.Info("site joined", "site", n.Name, "addr", n.Address())
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	state := StateDead
	e.m.mu.Lock()
	if e.m.leaving[casualdb.SiteID(n.Name)] {
		state = StateLeft
	}
	e.m.mu.Unlock()
	e.m.setState(n, state)
	e.m.log.Info("site gone", "site", n.Name, "state", state)
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	state := StateAlive
	if n.State == memberlist.StateSuspect {
		state = StateSuspect
	}
	e.m.setState(n, state)
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records at the matching level.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(line, "[ERR]"):
		level = slog.LevelError
	case strings.HasPrefix(line, "[WARN]"):
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)

func splitHostPort(hp string) (string, int, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1-65535", port)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, p, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
