package apply

import "github.com/casualdb/casualdb/meta"

// versionCache holds the versions apply recorded for rows it left present,
// so that the next run touching them need not read casualdb.row_version.
//
// An entry is used only when the row's xmin, which the run reads anyway
// when it locks the row, still equals the entry's: every write of the row
// changes its xmin, and the only writer of a row's version that does not
// write the row is apply itself (a change that lost, whose clock is merged),
// which updates the entry. A row whose xmin moved was written locally (or
// by something else) since: its version is read from the database and from
// capture (see Capture.Pending). Deleted rows are not cached: their
// tombstones are collected in the database, and an absent row has no xmin.
//
// Two generations of at most max/2 entries; the apply loop's goroutine only.
type versionCache struct {
	max       int
	hot, cold map[meta.RowKey]meta.RowVersion
}

func newVersionCache(max int) *versionCache {
	return &versionCache{max: max, hot: map[meta.RowKey]meta.RowVersion{}, cold: map[meta.RowKey]meta.RowVersion{}}
}

// get returns k's entry.
func (c *versionCache) get(k meta.RowKey) (meta.RowVersion, bool) {
	if rv, ok := c.hot[k]; ok {
		return rv, true
	}
	if rv, ok := c.cold[k]; ok {
		c.put(k, rv)
		return rv, true
	}
	return meta.RowVersion{}, false
}

// put records what a committed run recorded for k.
func (c *versionCache) put(k meta.RowKey, rv meta.RowVersion) {
	delete(c.cold, k)
	if c.max <= 0 || rv.Deleted || rv.Xmin == 0 {
		delete(c.hot, k)
		return
	}
	if len(c.hot) >= c.max/2 {
		c.cold, c.hot = c.hot, make(map[meta.RowKey]meta.RowVersion, len(c.hot))
	}
	c.hot[k] = rv
}

// dropTable forgets the entries of table (it was truncated).
func (c *versionCache) dropTable(table string) {
	for _, m := range []map[meta.RowKey]meta.RowVersion{c.hot, c.cold} {
		for k := range m {
			if k.Table == table {
				delete(m, k)
			}
		}
	}
}
