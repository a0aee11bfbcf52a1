package capture

import (
	"github.com/casualdb/casualdb/meta"
)

// versionCache holds the recorded versions of recently written rows, so that
// versioning a local write rarely needs to ask the database for the version
// it overwrites.
//
// It is exact, not a hint: capture is the only writer of local versions and
// learns apply's writes in WAL order (see Capturer.BeginApply), so an entry
// always equals what the database holds, or will hold once the batch that
// wrote it is recorded. Entries of batches not yet recorded are pending: they
// are what the database does not hold yet, so they are never evicted. The
// others live in two generations (hot, cold) of at most max/2 entries each:
// a hit in cold moves the entry to hot; when hot is full it becomes cold and
// the old cold generation is dropped. Tombstones are not kept once recorded,
// so that tombstone collection, which deletes them from the database, never
// leaves a stale entry behind.
//
// Only the capture pipeline's goroutines touch it, under Capturer.cacheMu.
type versionCache struct {
	max       int
	hot, cold map[meta.RowKey]meta.RowVersion
	pending   map[meta.RowKey]pendingVersion
}

// pendingVersion is a version written by batch gen, not recorded yet.
type pendingVersion struct {
	rv  meta.RowVersion
	gen uint64
}

func newVersionCache(max int) *versionCache {
	return &versionCache{max: max, hot: map[meta.RowKey]meta.RowVersion{}, cold: map[meta.RowKey]meta.RowVersion{}, pending: map[meta.RowKey]pendingVersion{}}
}

// get returns k's recorded version; ok is false when the cache does not know
// it (the database may).
func (c *versionCache) get(k meta.RowKey) (rv meta.RowVersion, ok bool) {
	if p, ok := c.pending[k]; ok {
		return p.rv, true
	}
	if rv, ok := c.hot[k]; ok {
		return rv, true
	}
	if rv, ok := c.cold[k]; ok {
		delete(c.cold, k)
		c.put(k, rv)
		return rv, true
	}
	return meta.RowVersion{}, false
}

// put caches a version the database holds.
func (c *versionCache) put(k meta.RowKey, rv meta.RowVersion) {
	if c.max <= 0 || rv.Deleted {
		delete(c.hot, k)
		delete(c.cold, k)
		return
	}
	if len(c.hot) >= c.max/2 {
		c.cold, c.hot = c.hot, make(map[meta.RowKey]meta.RowVersion, len(c.hot))
	}
	c.hot[k] = rv
	delete(c.cold, k)
}

// write records that batch gen wrote k's version rv (not recorded yet).
func (c *versionCache) write(k meta.RowKey, rv meta.RowVersion, gen uint64) {
	c.pending[k] = pendingVersion{rv: rv, gen: gen}
}

// recorded moves what batch gen wrote from pending to the generations: the
// database holds it now. Entries written again by a later batch stay pending.
func (c *versionCache) recorded(keys []meta.RowKey, gen uint64) {
	for _, k := range keys {
		if p, ok := c.pending[k]; ok && p.gen <= gen {
			delete(c.pending, k)
			c.put(k, p.rv)
		}
	}
}

// dropTable forgets every recorded entry of table (a truncation removed its
// versions from the database). Pending entries must have been recorded
// first (the pipeline drains before a truncation).
func (c *versionCache) dropTable(table string) {
	for _, m := range []map[meta.RowKey]meta.RowVersion{c.hot, c.cold} {
		for k := range m {
			if k.Table == table {
				delete(m, k)
			}
		}
	}
}

// clear forgets every recorded entry (something wrote versions the cache
// cannot account for).
func (c *versionCache) clear() {
	clear(c.hot)
	clear(c.cold)
}

// len is the number of entries, pending included.
func (c *versionCache) len() int { return len(c.hot) + len(c.cold) + len(c.pending) }
