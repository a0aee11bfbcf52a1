package node

import (
	"context"
	"encoding/json"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/hint"
	"github.com/casualdb/casualdb/ring"
)

// gossipState is this site's digest (hint.Digest), called from gossip's
// goroutines: it reads apply's stats and the hints' cached expiry records
// (mutexes, no I/O) and must not block.
func (s *Node) gossipState() []byte {
	st := hint.Digest{Applied: map[casualdb.SiteID]hint.Applied{}}
	if s.keeper != nil {
		st.Expired = s.keeper.Gossiped()
	}
	if s.applier != nil {
		for o, os := range s.applier.Stats().Origins {
			st.Applied[o] = hint.Applied{Seq: os.Seq, Epoch: os.Epoch}
		}
	}
	b, _ := json.Marshal(st)
	return b
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
	hs, expiries := s.keeper.Stats(ctx)
	for site, h := range hs {
		ps := st.Peers[string(site)]
		ps.HintsHeld, ps.HintsHanded, ps.HintsExpired, ps.LateHints, ps.RelayHints = h.Held, h.Handed, h.Expired, h.Late, h.Relay
		st.Peers[string(site)] = ps
	}
	st.HintExpiries = expiries
	last := st.Capture.OutboxSeq
	for name, ps := range st.Peers {
		if m, ok := memberState(cs, name); ok {
			ps.State = m
		}
		digest, ok := s.keeper.Digest(casualdb.SiteID(name))
		if !ok {
			st.Peers[name] = ps
			continue
		}
		got, ok := digest.Applied[self]
		if !ok || got.Epoch != s.outbox.Epoch() {
			got = hint.Applied{}
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
