package integration

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// missingReports returns site i's /status "missing": what it misses
// because a holder let the hints for it expire.
func missingReports(t *testing.T, c *cluster, i int) []map[string]any {
	t.Helper()
	var out []map[string]any
	list, _ := status(t, c, i)["missing"].([]any)
	for _, m := range list {
		out = append(out, m.(map[string]any))
	}
	return out
}

// hintExpiries returns site i's /status "hint_expiries": the hints it
// expired as a holder.
func hintExpiries(t *testing.T, c *cluster, i int) []map[string]any {
	t.Helper()
	var out []map[string]any
	list, _ := status(t, c, i)["hint_expiries"].([]any)
	for _, m := range list {
		out = append(out, m.(map[string]any))
	}
	return out
}

func healthzBody(t *testing.T, c *cluster, i int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", c.sites[i].adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

// TestHints_RetentionExpiresReportsAndRepairs: a writes while c is down, so
// b keeps a's transactions as hints for c; a goes down; b's hints outlive
// cluster.hint_retention and expire, recorded and counted. c comes back: it
// cannot get a's writes from anyone, and says so (status, metric, healthz
// detail) instead of looking converged. Then a comes back, c gets the
// writes from a's outbox, every site converges and the report clears, at c
// and at b.
func TestHints_RetentionExpiresReportsAndRepairs(t *testing.T) {
	c := newHintCluster(t, 2*time.Second)

	c.writeWhileCDown()
	// b has every one of them as a hint (held, or already expired).
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		held, expired := peerField(t, c, 1, "c", "hints_held"), peerField(t, c, 1, "c", "hints_expired")
		h, _ := held.(float64)
		e, _ := expired.(float64)
		if h+e != 5 {
			return fmt.Errorf("b: %v hints held for c, %v expired; want 5 in all", held, expired)
		}
		return nil
	})
	aSeq := status(t, c, 0)["capture"].(map[string]any)["outbox_last_seq"].(float64)
	c.kill(0)

	// b expires them after 2s: recorded first (and shown), counted.
	pgtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n, e := peerField(t, c, 1, "c", "hints_held"), peerField(t, c, 1, "c", "hints_expired"); n != 0.0 || e != 5.0 {
			return fmt.Errorf("b: %v hints held for c, %v expired; want 0 and 5", n, e)
		}
		return nil
	})
	recs := hintExpiries(t, c, 1)
	if len(recs) != 1 || recs[0]["for"] != "c" || recs[0]["origin"] != "a" || recs[0]["hints"] != 5.0 || recs[0]["last_seq"] != aSeq || recs[0]["resolved"] != false {
		t.Fatalf("b's expiry records: %v; want one, open, for c from a, 5 hints up to seq %v", recs, aSeq)
	}
	if m := metrics(t, c, 1); !strings.Contains(m, `casualdb_hints_expired_total{site="c"} 5`) {
		t.Errorf("b's metrics lack the expiry:\n%s", grepLines(m, "hints"))
	}
	if n, err := c.queryString(1, `SELECT hints::text FROM casualdb.hint_expiry WHERE for_site = 'c' AND origin = 'a'`); err != nil || n != "5" {
		t.Errorf("b's casualdb.hint_expiry: %s, %v; want 5 hints recorded", n, err)
	}

	// c comes back with a still down: nobody can give it a's writes, and
	// it reports that instead of looking converged.
	c.start(2)
	c.waitHealthy(2)
	pgtest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		ms := missingReports(t, c, 2)
		if len(ms) != 1 {
			return fmt.Errorf("c reports %v missing, want one report", ms)
		}
		m := ms[0]
		if m["origin"] != "a" || m["holder"] != "b" || m["up_to_seq"] != aSeq || m["missing_transactions"] != 5.0 {
			return fmt.Errorf("c reports %v; want 5 transactions of a up to seq %v, hints expired at b", m, aSeq)
		}
		return nil
	})
	if m := metrics(t, c, 2); !strings.Contains(m, `casualdb_missed_transactions{origin="a"} 5`) {
		t.Errorf("c's metrics lack the missed transactions:\n%s", grepLines(m, "missed"))
	}
	if got := healthzBody(t, c, 2); !strings.Contains(got, "warning: missing 5 transactions from origin a") {
		t.Errorf("c's /healthz: %q, want the warning", got)
	}
	out, err := exec.Command(binary, "status", "--admin", fmt.Sprintf("127.0.0.1:%d", c.sites[2].adminPort)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "WARNING: missing 5 transactions from origin a up to seq") {
		t.Errorf("casualdb status at c: %v\n%s", err, out)
	}
	if got, err := c.queryString(2, `SELECT count(*)::text FROM kv`); err != nil || got != "1" {
		t.Errorf("c holds %s rows, %v; want 1 (a's five writes are missing)", got, err)
	}

	// a comes back: its outbox kept everything c had not acknowledged.
	c.start(0)
	c.waitHealthy(0)
	c.waitConverged(90*time.Second, "kv")
	pgtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if ms := missingReports(t, c, 2); len(ms) != 0 {
			return fmt.Errorf("c still reports %v missing", ms)
		}
		if m := metrics(t, c, 2); !strings.Contains(m, `casualdb_missed_transactions{origin="a"} 0`) {
			return fmt.Errorf("c's metrics: %s, want 0 missed from a", grepLines(m, "missed"))
		}
		// b learns by gossip that c has applied past its record.
		if recs := hintExpiries(t, c, 1); len(recs) != 1 || recs[0]["resolved"] != true {
			return fmt.Errorf("b's expiry records: %v, want it resolved", recs)
		}
		return nil
	})
	if got := healthzBody(t, c, 2); got != "200 ok\n" {
		t.Errorf("c's /healthz after the repair: %q, want plain ok", got)
	}
}
