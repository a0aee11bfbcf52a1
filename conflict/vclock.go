package conflict

import (
	"strconv"

	"github.com/casualdb/casualdb"
)

// Ordering is how two vector clocks relate.
type Ordering int

// The orderings of CompareClocks(a, b).
const (
	// Equal: a and b count the same writes.
	Equal Ordering = iota
	// Before: a < b; b has seen all of a and more.
	Before
	// After: a > b; a has seen all of b and more.
	After
	// Concurrent: each has seen a write the other has not.
	Concurrent
)

// String returns "equal", "before", "after" or "concurrent".
func (o Ordering) String() string {
	switch o {
	case Equal:
		return "equal"
	case Before:
		return "before"
	case After:
		return "after"
	case Concurrent:
		return "concurrent"
	}
	return "Ordering(" + strconv.Itoa(int(o)) + ")"
}

// CompareClocks returns how a relates to b. Missing entries count as 0, so a
// nil clock is before every clock with a positive entry.
func CompareClocks(a, b casualdb.VectorClock) Ordering {
	less, greater := false, false // some entry of a is below / above b's
	for k, av := range a {
		bv := b[k]
		if av < bv {
			less = true
		} else if av > bv {
			greater = true
		}
	}
	for k, bv := range b {
		if _, ok := a[k]; !ok && bv > 0 {
			less = true
		}
	}
	switch {
	case less && greater:
		return Concurrent
	case less:
		return Before
	case greater:
		return After
	}
	return Equal
}

// Join returns the pointwise maximum of a and b as a new map; a and b are not
// modified. Zero entries are left out, so equal clocks join to equal maps
// whatever explicit zeros their inputs held.
func Join(a, b casualdb.VectorClock) casualdb.VectorClock {
	out := make(casualdb.VectorClock, max(len(a), len(b)))
	for k, v := range a {
		if v > 0 {
			out[k] = v
		}
	}
	for k, v := range b {
		if v > out[k] {
			out[k] = v
		}
	}
	return out
}

// Dominates reports whether a >= b pointwise: a has seen every write b has.
func Dominates(a, b casualdb.VectorClock) bool {
	for k, bv := range b {
		if a[k] < bv {
			return false
		}
	}
	return true
}
