package node

import (
	"context"
	"encoding/json"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/ring"
)

// gossipState is the digest each site gossips in full-state exchanges: what
// it has applied from every origin, so that every origin can tell how far
// behind each peer is and when a transaction has reached every site.
type gossipState struct {
	Applied map[casualdb.SiteID]appliedFrom `json:"applied"`
	// Expired are the open records of hints this site expired (hints.go):
	// each tells its site what it will not get from here.
	Expired []expiredHints `json:"expired,omitempty"`
}

type appliedFrom struct {
	Seq   uint64 `json:"seq"`   // last outbox sequence of the origin applied
	Epoch string `json:"epoch"` // of the origin's outbox (sequences restart with it)
}

// gossipState is called from gossip's goroutines: it reads apply's stats
// and the cached expiry records (mutexes, no I/O) and must not block.
func (s *Node) gossipState() []byte {
	st := gossipState{Applied: map[casualdb.SiteID]appliedFrom{}, Expired: s.gossipedExpiries()}
	if s.applier != nil {
		for o, os := range s.applier.Stats().Origins {
			st.Applied[o] = appliedFrom{Seq: os.Seq, Epoch: os.Epoch}
		}
	}
	b, _ := json.Marshal(st)
	return b
}

// peerDigest returns site's last gossiped digest; ok is false when none
// arrived yet or it does not decode (then the digest is empty: the site is
// taken to have applied nothing).
func (s *Node) peerDigest(site casualdb.SiteID) (d gossipState, ok bool) {
	b := s.member.RemoteState(site)
	if len(b) == 0 {
		return gossipState{}, false
	}
	if err := json.Unmarshal(b, &d); err != nil {
		s.log.Debug("a peer's gossiped digest does not decode", "peer", site, "err", err)
		return gossipState{}, false
	}
	return d, true
}

// ClusterStatus is the gossip view in /status.
type ClusterStatus struct {
	Members []MemberStatus `json:"members"`
	// RingOwnership is each site's share of the hash ring (as first site
	// of a preference list), over the members this site knows.
	RingOwnership map[string]float64 `json:"ring_ownership"`
}

// MemberStatus is one site as gossip sees it.
type MemberStatus struct {
	Site    string    `json:"site"`
	State   string    `json:"state"`
	Gossip  string    `json:"gossip_addr"`
	NATSURL string    `json:"nats_url"`
	Admin   string    `json:"admin,omitempty"`
	Since   time.Time `json:"since"`
}

// clusterStatus fills the gossip view and every peer's lag behind this
// site's outbox (from the peer's gossiped digest).
func (s *Node) clusterStatus(ctx context.Context, st *Status) {
	if s.member == nil {
		return
	}
	cs := &ClusterStatus{RingOwnership: map[string]float64{}}
	var sites []casualdb.SiteID
	for _, m := range s.member.Members() {
		cs.Members = append(cs.Members, MemberStatus{Site: string(m.Site), State: string(m.State), Gossip: m.Addr,
			NATSURL: m.Meta.NATSURL, Admin: m.Meta.Admin, Since: m.Since})
		sites = append(sites, m.Site)
	}
	if r, err := ring.New(ring.Config{Sites: sites}); err == nil {
		for site, share := range r.Ownership() {
			cs.RingOwnership[string(site)] = share
		}
	}
	st.Cluster = cs
	self := casualdb.SiteID(s.cfg.Site)
	held, err := s.hints.Held(ctx)
	if err != nil {
		s.log.Debug("hints held", "err", err)
	}
	s.peerMu.Lock()
	for site, h := range s.handoffs {
		ps := st.Peers[string(site)]
		ps.HintsHanded = h.HandedOff()
		st.Peers[string(site)] = ps
	}
	s.peerMu.Unlock()
	for site, n := range held {
		ps := st.Peers[string(site)]
		ps.HintsHeld = n
		st.Peers[string(site)] = ps
	}
	s.mu.Lock()
	for site, n := range s.hintsExpired {
		ps := st.Peers[string(site)]
		ps.HintsExpired = n
		st.Peers[string(site)] = ps
	}
	for site, n := range s.lateHinted {
		ps := st.Peers[string(site)]
		ps.LateHints = n
		st.Peers[string(site)] = ps
	}
	for site, n := range s.relayed {
		ps := st.Peers[string(site)]
		ps.RelayHints = n
		st.Peers[string(site)] = ps
	}
	st.HintExpiries = hintExpiryStatus(s.expiries)
	s.mu.Unlock()
	last := st.Capture.OutboxSeq
	for name, ps := range st.Peers {
		if m, ok := memberState(cs, name); ok {
			ps.State = m
		}
		digest, ok := s.peerDigest(casualdb.SiteID(name))
		if !ok {
			st.Peers[name] = ps
			continue
		}
		got, ok := digest.Applied[self]
		if !ok || got.Epoch != s.outbox.Epoch() {
			got = appliedFrom{}
		}
		ps.AppliedSeq = got.Seq
		ps.AppliedFrom = map[string]uint64{}
		for o, a := range digest.Applied {
			ps.AppliedFrom[string(o)] = a.Seq
		}
		ps.LagTransactions = last - min(last, got.Seq)
		if ps.LagTransactions > 0 {
			if t, ok, err := s.outbox.CommitTime(ctx, got.Seq+1); err == nil && ok {
				ps.LagSeconds = max(time.Since(t).Seconds(), 0)
			}
		}
		ps.Reported = true
		st.Peers[name] = ps
	}
}

func memberState(cs *ClusterStatus, site string) (string, bool) {
	for _, m := range cs.Members {
		if m.Site == site {
			return m.State, true
		}
	}
	return "", false
}
