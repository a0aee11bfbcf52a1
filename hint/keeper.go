// Package hint is hinted handoff's one owner. The Keeper keeps, at this
// site, the transactions a member that is down should have received (hints
// on receipt, late hints, relay hints), hands them off when it returns,
// expires them after cluster.hint_retention (never silently: see
// expiry.go), and reports what it holds, handed off and expired. The Store
// is the hints' JetStream stream; a Handoff delivers one site's hints.
//
// Placement is the ring's (ring.Ring.HintHolders decides who holds a hint)
// and the expiry records are rows of the casualdb schema (meta's
// hint_expiry); the rest of hinting lives here.
package hint

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/ring"
)

// Members is what the Keeper needs of gossip; *ring.Membership has it.
type Members interface {
	Members() []ring.Member
	Alive(site casualdb.SiteID) bool
	AllAlive() bool
	Generation() uint64
	RemoteState(site casualdb.SiteID) []byte
}

var _ Members = (*ring.Membership)(nil)

// Config configures a Keeper.
type Config struct {
	Site    casualdb.SiteID
	Store   *Store
	Members Members
	// N is the length of a transaction's preference list (cluster.n).
	N int
	// Retention is how long a hint is kept (cluster.hint_retention).
	Retention time.Duration
	// Supervise runs one hand-off until ctx is done, restarting it after
	// an error; name is "handoff:<site>". Nil: run it once.
	Supervise func(ctx context.Context, name string, run func(context.Context) error) error
	Logger    *slog.Logger
	// TLS, when set, is the TLS of the hand-offs' connections.
	TLS *tls.Config
	// IDPrefix, when set, returns the prefix of the message ids of what
	// this site publishes to a site (ship.Outbox.IDPrefix).
	IDPrefix func(casualdb.SiteID) string
}

// Keeper owns this site's hints. Hint is called by apply, Run by the
// sidecar; the rest is safe for concurrent use.
type Keeper struct {
	cfg Config
	log *slog.Logger

	recent recentTxs // what apply received lately, for late hints (recent.go)

	ringMu  sync.Mutex
	ringGen uint64     // the membership generation ring was built for
	ring    *ring.Ring // over every site gossip knows, in any state

	mu             sync.Mutex
	handoffs       map[casualdb.SiteID]*Handoff
	expired        map[casualdb.SiteID]uint64 // hints expired here since start, by the site they were for
	late           map[casualdb.SiteID]uint64 // late hints kept here since start, by site
	relayed        map[casualdb.SiteID]uint64 // relay hints kept here since start, by site
	expiries       []meta.HintExpiry          // casualdb.hint_expiry as last loaded (gossiped when open)
	expiriesLoaded bool                       // expiries was loaded once (Tend's)
}

// New validates cfg and returns a Keeper.
func New(cfg Config) (*Keeper, error) {
	if cfg.Site == "" || cfg.Store == nil || cfg.Members == nil {
		return nil, fmt.Errorf("%w: hints need a site, a store and the membership", casualdb.ErrConfig)
	}
	if cfg.N <= 0 {
		return nil, fmt.Errorf("%w: cluster.n must be positive", casualdb.ErrConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Supervise == nil {
		cfg.Supervise = func(ctx context.Context, _ string, run func(context.Context) error) error { return run(ctx) }
	}
	return &Keeper{cfg: cfg, log: cfg.Logger.With("component", "hints"), handoffs: map[casualdb.SiteID]*Handoff{},
		expired: map[casualdb.SiteID]uint64{}, late: map[casualdb.SiteID]uint64{}, relayed: map[casualdb.SiteID]uint64{}}, nil
}

var _ apply.Hinter = (*Keeper)(nil)

// Hint implements apply.Hinter: when this site is the stand-in for a
// member of the transaction's preference list that is down, it keeps the
// transaction for that member. Every received transaction is remembered
// for a while, for late hints.
func (k *Keeper) Hint(ctx context.Context, r apply.Received) error {
	k.recent.add(time.Now(), r)
	if k.cfg.Members.AllAlive() {
		return nil // every transaction, in the common case: no hint to keep
	}
	rg, err := k.currentRing()
	if err != nil {
		return err
	}
	for forSite, holder := range rg.HintHolders(r.Tx.ID(), k.cfg.N, r.Origin, k.cfg.Members.Alive) {
		if holder != k.cfg.Site {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := k.cfg.Store.Add(hctx, Hint{For: forSite, Origin: r.Origin, Epoch: r.Epoch, Seq: r.Seq, LSN: r.Tx.LSN, Commit: r.Tx.CommitTime, Data: r.Data, Proof: r.Proof, Cert: r.Cert})
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// Run follows the membership until ctx is done: it hands off the hints kept
// for every member (one hand-off each, which it owns), and keeps late and
// relay hints for a member the moment gossip stops taking it for alive.
func (k *Keeper) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	alive := map[casualdb.SiteID]bool{}
	for {
		for _, m := range k.cfg.Members.Members() {
			if m.Site == k.cfg.Site {
				continue
			}
			k.ensureHandoff(ctx, &wg, m.Site)
			up := k.cfg.Members.Alive(m.Site)
			if was, ok := alive[m.Site]; ok && was && !up {
				k.keepLateHints(ctx, m.Site)
			}
			alive[m.Site] = up
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// watchEvery is how often Run looks at the membership.
const watchEvery = 250 * time.Millisecond

// ensureHandoff starts handing off the hints kept for site, once; wg
// tracks the hand-off until ctx is done.
func (k *Keeper) ensureHandoff(ctx context.Context, wg *sync.WaitGroup, site casualdb.SiteID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.handoffs[site]; ok {
		return
	}
	var prefix string
	if k.cfg.IDPrefix != nil {
		prefix = k.cfg.IDPrefix(site)
	}
	h, err := NewHandoff(HandoffConfig{Hints: k.cfg.Store, For: site, Logger: k.cfg.Logger, TLS: k.cfg.TLS, IDPrefix: prefix, URL: func() (string, bool) {
		for _, m := range k.cfg.Members.Members() {
			if m.Site == site {
				return m.Meta.NATSURL, m.State == ring.StateAlive && m.Meta.NATSURL != ""
			}
		}
		return "", false
	}})
	if err != nil {
		k.log.Warn("hand off hints", "for", site, "err", err)
		return
	}
	k.handoffs[site] = h
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := k.cfg.Supervise(ctx, "handoff:"+string(site), h.Run); err != nil && ctx.Err() == nil {
			k.log.Warn("hand off hints stopped", "for", site, "err", err)
		}
	}()
}

// currentRing is the ring over every site gossip knows of, in any state: a
// site that is down keeps its place, so that its hints are kept for it.
func (k *Keeper) currentRing() (*ring.Ring, error) {
	gen := k.cfg.Members.Generation()
	k.ringMu.Lock()
	defer k.ringMu.Unlock()
	if k.ring != nil && k.ringGen == gen {
		return k.ring, nil
	}
	var sites []casualdb.SiteID
	for _, m := range k.cfg.Members.Members() {
		sites = append(sites, m.Site)
	}
	r, err := ring.New(ring.Config{Sites: sites})
	if err != nil {
		return nil, err
	}
	k.ring, k.ringGen = r, gen
	return r, nil
}

// Digest is what every site gossips about itself in full-state exchanges:
// what it has applied from every origin, so that every origin can tell how
// far behind each peer is and when a transaction has reached every site,
// and the open records of hints it expired (expiry.go), each telling its
// site what it will not get from there.
type Digest struct {
	Applied map[casualdb.SiteID]Applied `json:"applied"`
	Expired []Expired                   `json:"expired,omitempty"`
}

// Applied is how far a site has applied one origin.
type Applied struct {
	Seq   uint64 `json:"seq"`   // last outbox sequence of the origin applied
	Epoch string `json:"epoch"` // of the origin's outbox (sequences restart with it)
}

// Digest returns site's last gossiped digest; ok is false when none
// arrived yet or it does not decode (then the digest is empty: the site is
// taken to have applied nothing).
func (k *Keeper) Digest(site casualdb.SiteID) (d Digest, ok bool) {
	return PeerDigest(k.cfg.Members, site, k.log)
}

// PeerDigest decodes site's last digest as gossip holds it (see
// Keeper.Digest).
func PeerDigest(m Members, site casualdb.SiteID, log *slog.Logger) (d Digest, ok bool) {
	b := m.RemoteState(site)
	if len(b) == 0 {
		return Digest{}, false
	}
	d, err := DecodeDigest(b)
	if err != nil {
		log.Debug("a peer's gossiped digest does not decode", "peer", site, "err", err)
		return Digest{}, false
	}
	return d, true
}

// maxDigestExpired bounds the expiry records a digest may carry (a site
// gossips at most maxGossipedExpiries).
const maxDigestExpired = 4 * maxGossipedExpiries

// DecodeDigest decodes a site's gossiped digest. A digest that does not
// decode, or names something that is not a site, is an error: gossip comes
// from the network.
func DecodeDigest(b []byte) (Digest, error) {
	var d Digest
	if err := json.Unmarshal(b, &d); err != nil {
		return Digest{}, fmt.Errorf("decode digest: %w", err)
	}
	if len(d.Expired) > maxDigestExpired {
		return Digest{}, fmt.Errorf("decode digest: %d expiry records, at most %d", len(d.Expired), maxDigestExpired)
	}
	for o := range d.Applied {
		if !o.Valid() {
			return Digest{}, fmt.Errorf("decode digest: applied from %q, not a site name", o)
		}
	}
	for _, e := range d.Expired {
		if !e.For.Valid() || !e.Origin.Valid() {
			return Digest{}, fmt.Errorf("decode digest: expiry record for %q of %q: not site names", e.For, e.Origin)
		}
	}
	return d, nil
}

// SiteStats is what the Keeper did for one site since start, and holds
// for it now.
type SiteStats struct {
	Held    uint64 // hints held now
	Handed  uint64 // handed off to it
	Expired uint64 // expired (cluster.hint_retention)
	Late    uint64 // late hints kept for it
	Relay   uint64 // relay hints kept for it
}

// Stats returns the per-site counters and this site's expiry records.
func (k *Keeper) Stats(ctx context.Context) (map[casualdb.SiteID]SiteStats, []ExpiryStatus) {
	out := map[casualdb.SiteID]SiteStats{}
	held, err := k.cfg.Store.Held(ctx)
	if err != nil {
		k.log.Debug("hints held", "err", err)
	}
	for site, n := range held {
		s := out[site]
		s.Held = n
		out[site] = s
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for site, h := range k.handoffs {
		s := out[site]
		s.Handed = h.HandedOff()
		out[site] = s
	}
	for site, n := range k.expired {
		s := out[site]
		s.Expired = n
		out[site] = s
	}
	for site, n := range k.late {
		s := out[site]
		s.Late = n
		out[site] = s
	}
	for site, n := range k.relayed {
		s := out[site]
		s.Relay = n
		out[site] = s
	}
	return out, expiryStatus(k.expiries)
}
