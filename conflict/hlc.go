package conflict

import (
	"math"

	"github.com/casualdb/casualdb"
)

// NextHLC returns the HLC of a write committed at wall time commitMicros
// (microseconds since the Unix epoch) that overwrote a version with HLC prev:
// (commitMicros, 0) if commitMicros > prev.Wall, else (prev.Wall,
// prev.Logical+1). When the logical counter is exhausted it carries into the
// wall part: (prev.Wall+1, 0).
//
// The result is always strictly greater than prev. This is what makes a write
// that saw another one win over it under last-writer-wins even when its
// site's clock is behind: the overwritten HLC, not the wall clock, is the
// floor.
func NextHLC(prev casualdb.HLC, commitMicros int64) casualdb.HLC {
	switch {
	case commitMicros > prev.Wall:
		return casualdb.HLC{Wall: commitMicros}
	case prev.Logical == math.MaxUint32:
		return casualdb.HLC{Wall: prev.Wall + 1}
	default:
		return casualdb.HLC{Wall: prev.Wall, Logical: prev.Logical + 1}
	}
}

// Next returns the version of a write at site committed at commitMicros that
// overwrote prev, the row's stored version at that site (nil: the row had no
// version). Its HLC is NextHLC(prev.HLC, commitMicros) (zero HLC for nil), its
// Origin is site, and its VC is a copy of prev.VC with site's counter
// incremented ({site: 1} for nil). prev is not modified.
//
// prev must be the version stored after every merge the site has made, not
// the last version the site wrote itself: the new version must follow
// everything the site has seen.
func Next(prev *casualdb.Version, site casualdb.SiteID, commitMicros int64) casualdb.Version {
	var (
		h  casualdb.HLC
		vc casualdb.VectorClock
	)
	if prev != nil {
		h = prev.HLC
		vc = prev.VC.Clone()
	} else {
		vc = make(casualdb.VectorClock, 1)
	}
	vc[site]++
	return casualdb.Version{HLC: NextHLC(h, commitMicros), Origin: site, VC: vc}
}
