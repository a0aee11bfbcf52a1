package capture

import (
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

func TestVersionCache(t *testing.T) {
	k := func(tbl, key string) meta.RowKey { return meta.RowKey{Table: tbl, Key: key} }
	v := func(wall int64) meta.RowVersion {
		return meta.RowVersion{Version: casualdb.Version{HLC: casualdb.HLC{Wall: wall}, Origin: "a"}}
	}
	c := newVersionCache(4)

	t.Run("pending entries are found and never evicted", func(t *testing.T) {
		c.write(k("t", "1"), v(1), 1)
		for i := 0; i < 10; i++ {
			c.put(k("t", string(rune('a'+i))), v(int64(i)))
		}
		if got, ok := c.get(k("t", "1")); !ok || got.Version.HLC.Wall != 1 {
			t.Fatalf("pending entry: got %v %v", got, ok)
		}
		if n := len(c.hot) + len(c.cold); n > 4 {
			t.Fatalf("%d recorded entries, bound 4", n)
		}
	})
	t.Run("recorded moves a batch's entries, not a later batch's", func(t *testing.T) {
		c.write(k("t", "2"), v(2), 1)
		c.write(k("t", "2"), v(3), 2) // written again by batch 2
		c.recorded([]meta.RowKey{k("t", "1"), k("t", "2")}, 1)
		if _, ok := c.pending[k("t", "1")]; ok {
			t.Fatal("batch 1's entry still pending")
		}
		if p, ok := c.pending[k("t", "2")]; !ok || p.rv.Version.HLC.Wall != 3 {
			t.Fatalf("batch 2's entry: %v %v", p, ok)
		}
		if got, ok := c.get(k("t", "1")); !ok || got.Version.HLC.Wall != 1 {
			t.Fatalf("recorded entry: got %v %v", got, ok)
		}
	})
	t.Run("recorded tombstones are not kept", func(t *testing.T) {
		d := v(9)
		d.Deleted = true
		c.write(k("t", "3"), d, 3)
		if got, ok := c.get(k("t", "3")); !ok || !got.Deleted {
			t.Fatalf("pending tombstone: %v %v", got, ok)
		}
		c.recorded([]meta.RowKey{k("t", "3")}, 3)
		if _, ok := c.get(k("t", "3")); ok {
			t.Fatal("a recorded tombstone is still cached")
		}
	})
	t.Run("dropTable and clear keep pending entries", func(t *testing.T) {
		c.put(k("u", "1"), v(1))
		c.put(k("t", "9"), v(1))
		c.dropTable("u")
		if _, ok := c.get(k("u", "1")); ok {
			t.Fatal("dropped table's entry still cached")
		}
		if _, ok := c.get(k("t", "9")); !ok {
			t.Fatal("other table's entry dropped")
		}
		c.clear()
		if _, ok := c.get(k("t", "9")); ok {
			t.Fatal("entry survived clear")
		}
		if _, ok := c.get(k("t", "2")); !ok {
			t.Fatal("pending entry lost by clear")
		}
	})
	t.Run("disabled cache keeps only pending entries", func(t *testing.T) {
		c := newVersionCache(-1)
		c.put(k("t", "1"), v(1))
		if _, ok := c.get(k("t", "1")); ok {
			t.Fatal("disabled cache kept an entry")
		}
		c.write(k("t", "1"), v(2), 1)
		if _, ok := c.get(k("t", "1")); !ok {
			t.Fatal("pending entry not found")
		}
	})
}

// TestShouldLinger: a small batch waits only in a steady stream; a lone
// transaction on a quiet site, a batch that is big enough or full, or no
// linger at all never waits.
func TestShouldLinger(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct {
		n, max     int
		since, lin time.Duration
		want       bool
	}{
		{1, 256, ms, ms, true},
		{lingerBelow - 1, 256, 3 * ms, ms, true},
		{lingerBelow, 256, ms, ms, false},
		{4, 4, ms, ms, false}, // full
		{1, 256, 4 * ms, ms, false},
		{1, 256, time.Hour, ms, false},
		{1, 256, 0, 0, false},
	} {
		if got := shouldLinger(tt.n, tt.max, tt.since, tt.lin); got != tt.want {
			t.Errorf("shouldLinger(%d, %d, %s, %s) = %v, want %v", tt.n, tt.max, tt.since, tt.lin, got, tt.want)
		}
	}
}
