package hint

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
)

// Late hints. A site keeps a hint only for a transaction it receives while
// gossip says a member of the transaction's preference list is down; but
// between a member's failure and gossip declaring it dead pass seconds
// (memberlist's probes and suspicion), and what arrived meanwhile was
// applied and acknowledged as if the member would get it from its origin.
// If the origin then goes down too, the member would wait for it until the
// origin returns. So every site keeps in memory what it received recently,
// and when a member stops being alive it hints, as the ring's stand-in,
// every recent transaction the member had not applied by its last gossiped
// digest. This is best effort by design: the recent window is memory (a
// crash of this site forgets it), and the origin's outbox still holds every
// transaction the member has not acknowledged.
const (
	// recentWindow is how long received transactions are remembered: well
	// beyond memberlist's failure detection.
	recentWindow = 2 * time.Minute
	// recentMaxBytes bounds the memory they take; the oldest go first.
	recentMaxBytes = 64 << 20
)

// recentTx is one transaction this site received, as the hint would keep it.
type recentTx struct {
	at  time.Time
	id  string // the transaction's id (its place on the ring)
	rec Hint
}

// recentTxs remembers what this site received in the last recentWindow.
// Safe for concurrent use: apply adds (for every received transaction: it
// must stay cheap), the member watcher reads.
type recentTxs struct {
	mu    sync.Mutex
	list  []recentTx // list[head:] are remembered, in arrival order
	head  int
	bytes int
}

// add remembers r (its data copied: the message it came in is not kept)
// and forgets what fell out of the window or the byte bound.
func (rt *recentTxs) add(now time.Time, r apply.Received) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.list = append(rt.list, recentTx{at: now, id: r.Tx.ID(), rec: Hint{Origin: r.Origin, Epoch: r.Epoch,
		Seq: r.Seq, LSN: r.Tx.LSN, Commit: r.Tx.CommitTime, Data: bytes.Clone(r.Data), Proof: r.Proof, Cert: r.Cert}})
	rt.bytes += rt.list[len(rt.list)-1].rec.size()
	for rt.head < len(rt.list) && (now.Sub(rt.list[rt.head].at) > recentWindow || rt.bytes > recentMaxBytes) {
		rt.bytes -= rt.list[rt.head].rec.size()
		rt.list[rt.head] = recentTx{} // its data can go
		rt.head++
	}
	// Compact once the forgotten prefix is the larger half: each entry is
	// copied a bounded number of times, not once per add.
	if rt.head > len(rt.list)/2 {
		rt.list = append(rt.list[:0:0], rt.list[rt.head:]...)
		rt.head = 0
	}
}

// missedBy returns the remembered transactions that a site had not applied
// by its digest (applied, per origin; an origin it had in another epoch, or
// not at all, counts as nothing applied), other than its own.
func (rt *recentTxs) missedBy(site casualdb.SiteID, applied map[casualdb.SiteID]Applied) []recentTx {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []recentTx
	for _, t := range rt.list[rt.head:] {
		if t.rec.Origin == site {
			continue
		}
		if a, ok := applied[t.rec.Origin]; ok && a.Epoch == t.rec.Epoch && t.rec.Seq <= a.Seq {
			continue
		}
		out = append(out, t)
	}
	return out
}

// lateHints keeps as hints for site, which just stopped being alive, the
// recent transactions it may have missed and this site is the stand-in
// for. It returns how many it kept that were not kept already.
func (k *Keeper) lateHints(ctx context.Context, site casualdb.SiteID) (int, error) {
	digest, _ := k.Digest(site)
	missed := k.recent.missedBy(site, digest.Applied)
	if len(missed) == 0 {
		return 0, nil
	}
	rg, err := k.currentRing()
	if err != nil {
		return 0, err
	}
	self := k.cfg.Site
	return k.keepHints(ctx, site, missed, func(t recentTx) bool {
		return rg.HintHolders(t.id, k.cfg.N, t.rec.Origin, k.cfg.Members.Alive)[site] == self
	})
}

// relayHints keeps as hints for every other live peer the recent
// transactions of origin, which just stopped being alive, that the peer had
// not applied by its last gossiped digest: a peer cut off from the origin
// (or slower) would otherwise wait for them until the origin returns, and
// for ever if it does not, while this site holds them. Every live site that
// received them relays them; the peer applies one copy. It returns how many
// it kept that were not kept already, by peer.
func (k *Keeper) relayHints(ctx context.Context, origin casualdb.SiteID) (map[casualdb.SiteID]int, error) {
	out := map[casualdb.SiteID]int{}
	self := k.cfg.Site
	for _, m := range k.cfg.Members.Members() {
		if m.Site == self || m.Site == origin || !k.cfg.Members.Alive(m.Site) {
			continue
		}
		digest, _ := k.Digest(m.Site)
		n, err := k.keepHints(ctx, m.Site, k.recent.missedBy(m.Site, digest.Applied), func(t recentTx) bool { return t.rec.Origin == origin })
		out[m.Site] = n
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// keepHints keeps, as hints for site, the transactions of ts that want
// accepts, and returns how many were not kept already.
func (k *Keeper) keepHints(ctx context.Context, site casualdb.SiteID, ts []recentTx, want func(recentTx) bool) (int, error) {
	kept := 0
	for _, t := range ts {
		if !want(t) {
			continue
		}
		h := t.rec
		h.For = site
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		added, err := k.cfg.Store.Add(hctx, h)
		cancel()
		if err != nil {
			return kept, err
		}
		if added { // not already kept (on receipt, or by an earlier round)
			kept++
		}
	}
	return kept, nil
}

// keepLateHints runs lateHints and relayHints for a site gossip no longer
// takes for alive, logs and counts the outcome. Called by Run.
func (k *Keeper) keepLateHints(ctx context.Context, site casualdb.SiteID) {
	n, err := k.lateHints(ctx, site)
	if err != nil {
		k.log.Warn("keep late hints; the site gets those transactions from their origins only", "for", site, "kept", n, "err", err)
	}
	if n > 0 {
		k.log.Info("kept late hints: transactions received before gossip declared the site down, which it had not applied", "for", site, "hints", n)
	}
	relayed, err := k.relayHints(ctx, site)
	if err != nil {
		k.log.Warn("relay a down origin's transactions to peers that lack them", "origin", site, "err", err)
	}
	for peer, n := range relayed {
		k.log.Info("relaying a down origin's transactions to a peer that had not applied them", "origin", site, "for", peer, "hints", n)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.late[site] += uint64(n)
	for peer, n := range relayed {
		k.relayed[peer] += uint64(n)
	}
}

// size is what a remembered hint counts against recentMaxBytes.
func (h Hint) size() int { return len(h.Data) + len(h.Proof) }
