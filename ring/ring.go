package ring

import (
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/casualdb/casualdb"
	"github.com/cespare/xxhash/v2"
)

// DefaultVNodes is the number of virtual nodes per site when Config.VNodes
// is zero: enough that three sites own between roughly 28% and 38% of the
// hash space each.
const DefaultVNodes = 128

// Config configures a Ring.
type Config struct {
	// Sites are the members, in any order; duplicates are ignored. Every
	// site that builds a ring from the same members gets the same ring.
	Sites []casualdb.SiteID
	// VNodes is the number of virtual nodes (tokens) per site. Default
	// DefaultVNodes; zero means the default.
	VNodes int
}

// token is one virtual node: a point on the hash circle owned by a site.
type token struct {
	hash uint64
	site casualdb.SiteID
}

// Ring is a consistent-hash ring over sites with virtual nodes. It is
// immutable and safe for concurrent use; membership changes build a new
// one. Placement is a pure function of the members and the key: no I/O,
// no clock, no randomness.
type Ring struct {
	sites  []casualdb.SiteID // sorted, distinct
	tokens []token           // sorted by hash, then site
}

// New builds the ring of cfg.Sites.
func New(cfg Config) (*Ring, error) {
	if cfg.VNodes < 0 {
		return nil, fmt.Errorf("%w: ring: vnodes %d: want a positive number", casualdb.ErrConfig, cfg.VNodes)
	}
	if cfg.VNodes == 0 {
		cfg.VNodes = DefaultVNodes
	}
	sites := slices.Clone(cfg.Sites)
	slices.Sort(sites)
	sites = slices.Compact(sites)
	r := &Ring{sites: sites, tokens: make([]token, 0, len(sites)*cfg.VNodes)}
	for _, s := range sites {
		if s == "" {
			return nil, fmt.Errorf("%w: ring: empty site name", casualdb.ErrConfig)
		}
		for i := range cfg.VNodes {
			r.tokens = append(r.tokens, token{hash: xxhash.Sum64String(string(s) + "#" + strconv.Itoa(i)), site: s})
		}
	}
	sort.Slice(r.tokens, func(i, j int) bool {
		a, b := r.tokens[i], r.tokens[j]
		if a.hash != b.hash {
			return a.hash < b.hash
		}
		return a.site < b.site // a collision resolves the same everywhere
	})
	return r, nil
}

// Sites returns the members, sorted.
func (r *Ring) Sites() []casualdb.SiteID { return slices.Clone(r.sites) }

// KeyHash is where a transaction id lands on the ring.
func KeyHash(id string) uint64 { return xxhash.Sum64String(id) }

// walk calls visit with the distinct sites met clockwise from h, each once,
// until visit returns false or every site was met.
func (r *Ring) walk(h uint64, visit func(casualdb.SiteID) bool) {
	if len(r.tokens) == 0 {
		return
	}
	start := sort.Search(len(r.tokens), func(i int) bool { return r.tokens[i].hash >= h })
	seen := make(map[casualdb.SiteID]bool, len(r.sites))
	for i := 0; i < len(r.tokens) && len(seen) < len(r.sites); i++ {
		s := r.tokens[(start+i)%len(r.tokens)].site
		if seen[s] {
			continue
		}
		seen[s] = true
		if !visit(s) {
			return
		}
	}
}

// Preference returns the preference list of id: the first n distinct sites
// clockwise from its hash (all sites when there are fewer than n).
func (r *Ring) Preference(id string, n int) []casualdb.SiteID {
	var out []casualdb.SiteID
	if n <= 0 {
		return out
	}
	r.walk(KeyHash(id), func(s casualdb.SiteID) bool {
		out = append(out, s)
		return len(out) < n
	})
	return out
}

// split walks the ring from id's hash: the first n distinct sites are the
// preference list, and the sites after it that spare accepts are the
// stand-ins, in ring order.
func (r *Ring) split(id string, n int, spare func(casualdb.SiteID) bool) (pref, spares []casualdb.SiteID) {
	r.walk(KeyHash(id), func(s casualdb.SiteID) bool {
		if len(pref) < n {
			pref = append(pref, s)
		} else if spare(s) {
			spares = append(spares, s)
		}
		return true
	})
	return pref, spares
}

// Placement is one site that keeps a transaction durably: a member of the
// preference list, or a stand-in that keeps it as a hint for HintFor.
type Placement struct {
	Site    casualdb.SiteID
	HintFor casualdb.SiteID // empty: Site is in the preference list itself
}

// Sloppy returns where id is kept under a sloppy quorum of n: the live
// members of its preference list, and for each member that is down the next
// live site clockwise beyond the list, which keeps the transaction as a
// hint for it (in the list's order). Fewer than n placements come back when
// fewer than n sites are live. alive must be a pure function of the
// caller's current view of the cluster.
func (r *Ring) Sloppy(id string, n int, alive func(casualdb.SiteID) bool) []Placement {
	if n <= 0 {
		return nil
	}
	pref, spare := r.split(id, n, alive)
	out := make([]Placement, 0, n)
	for _, s := range pref {
		switch {
		case alive(s):
			out = append(out, Placement{Site: s})
		case len(spare) > 0:
			out = append(out, Placement{Site: spare[0], HintFor: s})
			spare = spare[1:]
		}
	}
	return out
}

// HintHolders returns, for each member of id's preference list of n that is
// down (other than origin, whose own outbox keeps its transactions), the
// live site that keeps the transaction as a hint for it: the next live
// site clockwise beyond the list, as Sloppy places it, or — in a cluster
// too small to have one (three sites and n = 3) — the next live member of
// the list. The origin never holds hints for its own transactions: the
// point of a hint is that the member gets the transaction even while the
// origin is down. A down member with no possible holder is left out.
func (r *Ring) HintHolders(id string, n int, origin casualdb.SiteID, alive func(casualdb.SiteID) bool) map[casualdb.SiteID]casualdb.SiteID {
	out := map[casualdb.SiteID]casualdb.SiteID{}
	if n <= 0 {
		return out
	}
	pref, spare := r.split(id, n, func(s casualdb.SiteID) bool { return alive(s) && s != origin })
	for _, s := range pref {
		if alive(s) && s != origin {
			spare = append(spare, s) // list members stand in last
		}
	}
	used := map[casualdb.SiteID]bool{}
	for _, x := range pref {
		if x == origin || alive(x) {
			continue
		}
		for _, h := range spare {
			if !used[h] {
				out[x], used[h] = h, true
				break
			}
		}
		if _, ok := out[x]; !ok && len(spare) > 0 {
			out[x] = spare[0] // more down members than holders: share one
		}
	}
	return out
}

// Ownership returns the share of the hash space (0 to 1) for which each site
// is the first in the preference list.
func (r *Ring) Ownership() map[casualdb.SiteID]float64 {
	out := make(map[casualdb.SiteID]float64, len(r.sites))
	if len(r.tokens) == 0 {
		return out
	}
	const circle = float64(1<<63) * 2
	for i, t := range r.tokens {
		// Token i owns the arc (previous token, t].
		prev := r.tokens[(i+len(r.tokens)-1)%len(r.tokens)].hash
		arc := t.hash - prev // wraps around for the first token, as it should
		if len(r.tokens) == 1 {
			out[t.site] = 1
			return out
		}
		out[t.site] += float64(arc) / circle
	}
	return out
}
