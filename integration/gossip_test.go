package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
)

// peerField reads st["peers"][peer][field] from site i's /status.
func peerField(t *testing.T, c *cluster, i int, peer, field string) any {
	t.Helper()
	peers, _ := status(t, c, i)["peers"].(map[string]any)
	p, _ := peers[peer].(map[string]any)
	return p[field]
}

// memberStates renders site i's gossip view as "a=alive b=alive ...".
func memberStates(t *testing.T, c *cluster, i int) string {
	t.Helper()
	cl, _ := status(t, c, i)["cluster"].(map[string]any)
	members, _ := cl["members"].([]any)
	var out []string
	for _, m := range members {
		mm := m.(map[string]any)
		out = append(out, fmt.Sprintf("%v=%v", mm["site"], mm["state"]))
	}
	return strings.Join(out, " ")
}

// TestGossip_ClusterFormsAndHeals starts three sites that know nothing of
// each other but one gossip address: they find each other's NATS, converge,
// report each other's lag; a site killed is seen as dead and its backlog
// grows; restarted, it rejoins and catches up.
func TestGossip_ClusterFormsAndHeals(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Gossip: true, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`})
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range c.sites {
			if got := memberStates(t, c, i); got != "a=alive b=alive c=alive" {
				return fmt.Errorf("site %s sees %q", c.sites[i].name, got)
			}
		}
		return nil
	})
	for i := range c.sites {
		c.exec(i, fmt.Sprintf(`INSERT INTO kv VALUES (%d, 'from %s')`, i, c.sites[i].name))
	}
	c.waitConverged(60*time.Second, "kv")
	// Every peer reports, by gossip, that it has everything a wrote.
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, p := range []string{"b", "c"} {
			if r, lag := peerField(t, c, 0, p, "reported"), peerField(t, c, 0, p, "lag_transactions"); r != true || lag != 0.0 {
				return fmt.Errorf("a's view of %s: reported %v, lag %v transactions", p, r, lag)
			}
		}
		return nil
	})
	cl := status(t, c, 0)["cluster"].(map[string]any)
	var share float64
	for _, v := range cl["ring_ownership"].(map[string]any) {
		share += v.(float64)
	}
	if share < 0.999 || share > 1.001 {
		t.Errorf("ring ownership adds up to %f, want 1", share)
	}
	out, err := exec.Command(binary, "status", "--admin", fmt.Sprintf("127.0.0.1:%d", c.sites[0].adminPort)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "cluster (gossip):") || !strings.Contains(string(out), "site a: healthy") {
		t.Errorf("casualdb status: %v\n%s", err, out)
	}

	// b asks a to ship everything again (as apply does after waiting for a
	// missing sequence): it all comes, and b recognises it as duplicates.
	skipped := status(t, c, 1)["apply"].(map[string]any)["skipped_duplicates"].(float64)
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ship.RequestResend(rctx, c.natsURL(0), "a", "b", 1, c.peerTLS("b")...); err != nil {
		t.Fatal(err)
	}
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := status(t, c, 1)["apply"].(map[string]any)["skipped_duplicates"].(float64); got <= skipped {
			return fmt.Errorf("b skipped %v duplicates, had %v before the resend", got, skipped)
		}
		return nil
	})
	// A site asks for itself only: b may not publish a request naming
	// another; a's own certificate (unrestricted) may, and hears that it is
	// no peer.
	for as, want := range map[string]string{"b": "", "a": "unknown peer"} {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := ship.RequestResend(rctx, c.natsURL(0), "a", "nobody", 1, c.peerTLS(as)...)
		cancel()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a resend to another peer asked by %s: %v, want an error (%q)", as, err, want)
		}
	}

	// c fails: a sees it dead, and what a writes meanwhile waits for it.
	c.kill(2)
	pgtest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if got := memberStates(t, c, 0); got != "a=alive b=alive c=dead" {
			return fmt.Errorf("after c was killed, a sees %q", got)
		}
		return nil
	})
	c.exec(0, `INSERT INTO kv SELECT g, 'while c was down' FROM generate_series(10, 19) g`)
	// c lacks the insert, and any heartbeat a wrote since it died:
	// whatever a's outbox holds beyond what c last said it applied.
	var lagC float64
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		st := status(t, c, 0)
		last := st["capture"].(map[string]any)["outbox_last_seq"].(float64)
		peers := st["peers"].(map[string]any)
		pc, pb := peers["c"].(map[string]any), peers["b"].(map[string]any)
		lagC = pc["lag_transactions"].(float64)
		if lagC < 1 || lagC != last-pc["applied_seq"].(float64) {
			return fmt.Errorf("a's view of c: lag %v transactions, applied %v of a's %v; want the difference, at least 1", lagC, pc["applied_seq"], last)
		}
		if lag := pb["lag_transactions"]; lag != 0.0 {
			return fmt.Errorf("a's view of b: lag %v transactions, want 0", lag)
		}
		return nil
	})
	// (A heartbeat may come between the two reads.)
	if m := metrics(t, c, 0); !strings.Contains(m, `casualdb_member_alive{site="c"} 0`) ||
		!strings.Contains(m, fmt.Sprintf(`casualdb_peer_lag_transactions{peer="c"} %v`, lagC)) && !strings.Contains(m, fmt.Sprintf(`casualdb_peer_lag_transactions{peer="c"} %v`, lagC+1)) {
		t.Errorf("a's metrics lack c's state and lag:\n%s", grepLines(m, "member_alive", "peer_lag"))
	}

	// c comes back: it rejoins, catches up, and a sees it has.
	c.start(2)
	c.waitHealthy(2)
	c.waitConverged(60*time.Second, "kv")
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := memberStates(t, c, 0); got != "a=alive b=alive c=alive" {
			return fmt.Errorf("after c came back, a sees %q", got)
		}
		if lag := peerField(t, c, 0, "c", "lag_transactions"); lag != 0.0 {
			return fmt.Errorf("a's view of c: lag %v transactions, want 0", lag)
		}
		return nil
	})
}

func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// newHintCluster starts three gossiping sites a, b, c with a table kv
// holding one row, converged, every site seeing every other alive. Hints
// expire after retention (0: the default). No heartbeats: one of a's
// committed around c's failure would make the tests' exact hint counts off
// by one.
func newHintCluster(t *testing.T, retention time.Duration) *cluster {
	t.Helper()
	return newHintClusterWith(t, clusterOptions{HintRetention: retention})
}

// newHintClusterWith is newHintCluster with more options (Links, say).
func newHintClusterWith(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	opts.Sites, opts.Gossip = 3, true
	opts.Schema = `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`
	opts.Extra = append(opts.Extra, "gc:", "  heartbeat: 1h")
	c := newClusterWith(t, opts)
	for i := range c.sites {
		c.waitStates(i, "a=alive b=alive c=alive")
	}
	c.exec(0, `INSERT INTO kv VALUES (0, 'before')`)
	c.waitConverged(60*time.Second, "kv")
	// Every site's view of every other's digest is up to date, so that a
	// late hint (recent.go) is kept only for what a failing site missed.
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		last := map[string]float64{}
		for i, s := range c.sites {
			last[s.name] = c.statusNumber(i, "capture", "outbox_last_seq")
		}
		for i, s := range c.sites {
			for j, p := range c.sites {
				for k, o := range c.sites {
					if i == j || k == j {
						continue
					}
					if got := c.statusNumber(i, "peers", p.name, "applied_from", o.name); got < last[o.name] {
						return fmt.Errorf("%s sees %s applied %s up to %v of %v", s.name, p.name, o.name, got, last[o.name])
					}
				}
			}
		}
		return nil
	})
	return c
}

// writeWhileCDown kills c's sidecar, waits until a and b see it dead, and
// writes rows 1 to 5 of kv at a.
func (c *cluster) writeWhileCDown() {
	c.kill(2)
	c.waitStates(0, "a=alive b=alive c=dead")
	c.waitStates(1, "a=alive b=alive c=dead")
	for k := 1; k <= 5; k++ {
		c.exec(0, `INSERT INTO kv VALUES ($1, 'while c was down')`, k)
	}
}

// waitRows polls until site i holds want rows of table; why says where
// they come from.
func (c *cluster) waitRows(i int, table string, want int, why string) {
	c.t.Helper()
	pgtest.CheckFor(c.t, 60*time.Second, 100*time.Millisecond, func() error {
		got, err := c.queryString(i, `SELECT count(*)::text FROM `+table)
		if err != nil || got != fmt.Sprint(want) {
			return fmt.Errorf("%s holds %s rows of %s, %v; want %d (%s)", c.sites[i].name, got, table, err, want, why)
		}
		return nil
	})
}

// waitStates polls until site i sees the member states want.
func (c *cluster) waitStates(i int, want string) {
	t := c.t.(*testing.T)
	t.Helper()
	pgtest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if got := memberStates(t, c, i); got != want {
			return fmt.Errorf("site %s sees %q, want %q", c.sites[i].name, got, want)
		}
		return nil
	})
}

// TestGossip_HintedHandoff: a writes while c is down, so b keeps a's
// transactions as hints for c; then a goes down too, and c, back, gets a's
// writes from b's hints.
func TestGossip_HintedHandoff(t *testing.T) {
	c := newHintCluster(t, 0)

	c.writeWhileCDown()
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := peerField(t, c, 1, "c", "hints_held"); n != 5.0 {
			return fmt.Errorf("b holds %v hints for c, want 5", n)
		}
		return nil
	})
	c.kill(0)
	c.start(2)
	c.waitHealthy(2)
	c.waitRows(2, "kv", 6, "a's writes from b's hints")
	c.waitConverged(30*time.Second, "kv")
	// Five hints, plus any late or relay hints that were not copies of
	// those: if gossip at b saw c's restart as one more failure (a stale
	// suspicion of the old process), or a's failure while c was back, b
	// kept what c had not applied by its digest, and c skipped the copies.
	var handed float64
	pgtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		n, _ := peerField(t, c, 1, "c", "hints_held").(float64)
		h, _ := peerField(t, c, 1, "c", "hints_handed_off").(float64)
		late, _ := peerField(t, c, 1, "c", "late_hints").(float64)
		relay, _ := peerField(t, c, 1, "c", "relay_hints").(float64)
		if n != 0 || h != 5+late+relay {
			return fmt.Errorf("b: %v hints held for c, %v handed off (%v late, %v relay hints); want 0 and 5 + late + relay", n, h, late, relay)
		}
		handed = h
		return nil
	})
	if m := metrics(t, c, 1); !strings.Contains(m, fmt.Sprintf(`casualdb_hints_handed_off_total{site="c"} %v`, handed)) {
		t.Errorf("b's metrics lack the hand-off of %v hints:\n%s", handed, grepLines(m, "hints"))
	}
}

// TestGossip_LateHints: a writes right after c fails, before gossip has
// declared c dead, so b applies those transactions while it still takes c
// for alive and keeps no hint on receipt; when c is declared dead, b keeps
// them as late hints (c had not applied them, by its last digest). Then a
// goes down, and c, back, gets them from b.
func TestGossip_LateHints(t *testing.T) {
	c := newHintCluster(t, 0)
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		// c's digest, as a sees it, includes the first row; b's view may be
		// older (then b hints that row too, which c skips).
		if n, _ := peerField(t, c, 0, "c", "applied_seq").(float64); n < 1 {
			return fmt.Errorf("a's view of c's applied seq is %v", n)
		}
		return nil
	})

	c.kill(2)
	for k := 1; k <= 5; k++ {
		c.exec(0, `INSERT INTO kv VALUES ($1, 'while c was failing')`, k)
	}
	pgtest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if got, _ := c.queryString(1, `SELECT count(*)::text FROM kv`); got != "6" {
			return fmt.Errorf("b holds %s rows, want 6", got)
		}
		return nil
	})
	if got := memberStates(t, c, 1); !strings.Contains(got, "c=alive") && !strings.Contains(got, "c=suspect") {
		t.Logf("b declared c down before it applied a's writes (%s): the late path is not what this run exercises", got)
	}
	c.waitStates(1, "a=alive b=alive c=dead")
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		n, _ := peerField(t, c, 1, "c", "hints_held").(float64)
		late, _ := peerField(t, c, 1, "c", "late_hints").(float64)
		if n < 5 || late != n {
			return fmt.Errorf("b holds %v hints for c, %v of them late; want at least 5, all late", n, late)
		}
		return nil
	})
	c.kill(0)
	c.start(2)
	c.waitHealthy(2)
	c.waitRows(2, "kv", 6, "a's writes from b's late hints")
	if m := metrics(t, c, 1); !strings.Contains(m, `casualdb_late_hints_total{site="c"}`) {
		t.Errorf("b's metrics lack the late hints:\n%s", grepLines(m, "hints"))
	}
}
