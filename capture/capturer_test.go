package capture_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/ship"
	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

type env struct {
	pg     *pgtest.Server
	conn   *pgx.Conn
	outbox *ship.Outbox
	cap    *capture.Capturer
	stop   func()
	// statusInterval is how often capture confirms the slot; default 100ms.
	statusInterval time.Duration
	natsDir        string
	nats           *pgtest.NATS
	delays         delayLog
}

// delayLog keeps what capture reported through Config.ObserveDelay, per
// stage in the order reported.
type delayLog struct {
	mu     sync.Mutex
	stages map[string][]time.Duration
}

func (l *delayLog) observe(stage string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stages == nil {
		l.stages = map[string][]time.Duration{}
	}
	l.stages[stage] = append(l.stages[stage], d)
}

func (l *delayLog) get(stage string) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.stages[stage])
}

// startNATS starts the NATS server on the env's store and opens the
// outbox; restartNATS stops it first (as a sidecar restart does, which
// forgets JetStream's de-duplication window along with purged messages).
func (e *env) startNATS(t *testing.T) {
	t.Helper()
	n, err := pgtest.StartNATS(e.natsDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	js := pgtest.JetStream(t, n.URL())
	ob, err := ship.OpenOutbox(context.Background(), js, ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	e.nats, e.outbox = n, ob
}

func (e *env) restartNATS(t *testing.T) {
	t.Helper()
	e.nats.Shutdown()
	e.startNATS(t)
}

// newEnv prepares a site like the sidecar does and runs a Capturer into a
// real JetStream outbox.
func newEnv(t *testing.T, schema string) *env {
	t.Helper()
	return newEnvWith(t, schema, 100*time.Millisecond)
}

func newEnvWith(t *testing.T, schema string, statusInterval time.Duration) *env {
	t.Helper()
	ctx := context.Background()
	pg := pgtest.NewServer(t, "cap")
	if err := pg.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Connect(t, pg.DSN())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := capture.CheckSettings(ctx, conn); err != nil {
		t.Fatal(err)
	}
	tables, err := capture.ResolveTables(ctx, conn, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := meta.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := capture.EnsurePublication(ctx, conn, "casualdb", tables); err != nil {
		t.Fatal(err)
	}
	if err := capture.EnsureSlot(ctx, conn, "casualdb_a"); err != nil {
		t.Fatal(err)
	}
	e := &env{pg: pg, conn: conn, statusInterval: statusInterval, natsDir: t.TempDir()}
	e.startNATS(t)
	e.start(t)
	t.Cleanup(func() { e.stop() })
	return e
}

func (e *env) start(t *testing.T) {
	c, err := capture.New(capture.Config{Site: "a", DSN: e.pg.DSN(), Slot: "casualdb_a", Outbox: e.outbox, StatusInterval: e.statusInterval,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ObserveDelay: e.delays.observe})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	e.cap = c
	e.stop = func() {
		cancel()
		defer c.Close()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("capture: %v", err)
		}
		e.stop = func() {}
	}
}

// checkDelays waits until capture has reported n transactions captured, and
// checks that it reported each decoded once too, no later than captured.
// Capture reports delays only for the local transactions it appends.
func (e *env) checkDelays(t *testing.T, n int) {
	t.Helper()
	pgtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := len(e.delays.get(capture.StageCaptured)); got != n {
			return fmt.Errorf("captured reported for %d txs, want %d", got, n)
		}
		return nil
	})
	decoded, captured := e.delays.get(capture.StageDecoded), e.delays.get(capture.StageCaptured)
	if len(decoded) != n {
		t.Fatalf("decoded reported for %d txs, want %d", len(decoded), n)
	}
	for i := range decoded {
		if decoded[i] <= 0 || decoded[i] > captured[i] {
			t.Errorf("tx %d: decoded after %s, captured after %s", i, decoded[i], captured[i])
		}
	}
}

// txs waits until the outbox holds n transactions and returns them.
func (e *env) txs(t *testing.T, n int) []*casualdb.Tx {
	t.Helper()
	var out []*casualdb.Tx
	pgtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		var err error
		out, _, err = e.outbox.Since(context.Background(), 0, 1000)
		if err != nil {
			return err
		}
		if len(out) != n {
			return fmt.Errorf("outbox holds %d txs, want %d", len(out), n)
		}
		return nil
	})
	return out
}

func TestCapturer_Run(t *testing.T) {
	// Registered first, so it runs after every other cleanup.
	t.Cleanup(func() { goleak.VerifyNone(t) })
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, s text, n numeric, arr int[], j jsonb, big text);
		ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
		CREATE TABLE nokey (v text);`)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		if _, err := e.conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO t VALUES (1, 'a', 1.50, '{1,2}', '{"k": 1}', repeat('x', 10000))`)
	exec(`BEGIN; INSERT INTO t (id) VALUES (2); UPDATE t SET s = 'b' WHERE id = 1; COMMIT`)
	exec(`UPDATE t SET id = 3 WHERE id = 2`)
	exec(`INSERT INTO nokey VALUES ('not replicated')`)
	exec(`DELETE FROM t WHERE id = 3`)
	exec(`TRUNCATE t`)
	txs := e.txs(t, 5)

	t.Run("values", func(t *testing.T) {
		c := txs[0].Changes[0]
		want := []casualdb.Value{{Text: "1"}, {Text: "a"}, {Text: "1.50"}, {Text: "{1,2}"}, {Text: `{"k": 1}`}}
		for i, w := range want {
			if c.Values[i] != w {
				t.Errorf("column %d: got %+v, want %+v", i, c.Values[i], w)
			}
		}
		if got := len(c.Values[5].Text); got != 10000 {
			t.Errorf("big: got %d bytes, want 10000", got)
		}
		if rel := txs[0].Relations["public.t"]; rel.Columns[0].Type != "integer" || !rel.Columns[0].Key || rel.Columns[3].Type != "integer[]" {
			t.Errorf("relation: got %+v", rel.Columns)
		}
	})
	t.Run("multi-statement transaction, NULLs and unchanged TOAST", func(t *testing.T) {
		tx := txs[1]
		if len(tx.Changes) != 2 || tx.Changes[0].Op != casualdb.OpInsert || tx.Changes[1].Op != casualdb.OpUpdate {
			t.Fatalf("got %+v, want insert then update", tx.Changes)
		}
		if !tx.Changes[0].Values[1].Null {
			t.Errorf("s of id 2: got %+v, want NULL", tx.Changes[0].Values[1])
		}
		if !tx.Changes[1].Values[5].Unchanged {
			t.Errorf("big of id 1: got %+v, want unchanged", tx.Changes[1].Values[5])
		}
	})
	t.Run("versions", func(t *testing.T) {
		v1, v2 := txs[0].Changes[0].Version, txs[1].Changes[1].Version
		if v1.Origin != "a" || v1.VC["a"] != 1 || v2.VC["a"] != 2 {
			t.Errorf("vector clocks: got %v then %v, want a:1 then a:2", v1.VC, v2.VC)
		}
		if v2.HLC.Compare(v1.HLC) <= 0 {
			t.Errorf("HLC did not grow: %s then %s", v1.HLC, v2.HLC)
		}
		if txs[1].LSN <= txs[0].LSN || txs[0].Seq != 1 || txs[1].Seq != 2 {
			t.Errorf("order: lsn %d,%d seq %d,%d", txs[0].LSN, txs[1].LSN, txs[0].Seq, txs[1].Seq)
		}
	})
	t.Run("primary-key change is a delete and an upsert", func(t *testing.T) {
		ch := txs[2].Changes
		if len(ch) != 2 || ch[0].Op != casualdb.OpDelete || ch[0].Key[0] != "2" || ch[1].Op != casualdb.OpUpdate || ch[1].Key[0] != "3" {
			t.Errorf("got %+v", ch)
		}
	})
	t.Run("delete and truncate", func(t *testing.T) {
		if c := txs[3].Changes[0]; c.Op != casualdb.OpDelete || c.Key[0] != "3" {
			t.Errorf("delete: got %+v", c)
		}
		c := txs[4].Changes[0]
		if c.Op != casualdb.OpTruncate || c.Table != "public.t" {
			t.Fatalf("truncate: got %+v", c)
		}
		if c.Version.HLC.Compare(txs[3].Changes[0].Version.HLC) <= 0 {
			t.Errorf("truncate version %s not above the table's versions", c.Version.HLC)
		}
	})
	t.Run("metadata recorded and slot confirmed", func(t *testing.T) {
		pgtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			st, err := meta.LoadCaptureState(ctx, e.conn, "a")
			if err != nil || st.OutboxSeq != 5 {
				return fmt.Errorf("capture state %+v, %v; want seq 5", st, err)
			}
			var flushed string
			if err := e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'casualdb_a'`).Scan(&flushed); err != nil {
				return err
			}
			if l, _ := casualdb.ParseLSN(flushed); l < txs[4].LSN {
				return fmt.Errorf("slot confirmed %s, want at least %s", flushed, casualdb.FormatLSN(txs[4].LSN))
			}
			return nil
		})
		truncs, err := meta.LoadTruncations(ctx, e.conn)
		if err != nil || truncs["public.t"].HLC != txs[4].Changes[0].Version.HLC {
			t.Errorf("truncation marker: %+v, %v", truncs, err)
		}
	})
	t.Run("delays: decoded, then captured, once per transaction", func(t *testing.T) {
		e.checkDelays(t, len(txs))
	})
	t.Run("restart re-derives lost metadata and duplicates nothing", func(t *testing.T) {
		e.stop()
		// As if the sidecar died after the outbox append but before the
		// metadata was written (the collected floor the truncation raised
		// is written with it).
		if _, err := e.conn.Exec(ctx, `DELETE FROM casualdb.row_version; DELETE FROM casualdb.capture_state; DELETE FROM casualdb.truncation; DELETE FROM casualdb.collected_floor`); err != nil {
			t.Fatal(err)
		}
		e.start(t)
		exec(`INSERT INTO t VALUES (9, 'after restart')`)
		txs := e.txs(t, 6)
		if v := txs[5].Changes[0].Version; v.HLC.Compare(txs[4].Changes[0].Version.HLC) <= 0 {
			t.Errorf("insert after truncate got %s, not above the truncate's %s", v.HLC, txs[4].Changes[0].Version.HLC)
		}
		// The transactions streamed again after the restart and skipped
		// (in the outbox already) are not reported again.
		e.checkDelays(t, 6)
		// Recorded a moment after it is in the outbox.
		pgtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			vs, err := meta.LoadVersions(ctx, e.conn, []meta.RowKey{{Table: "public.t", Key: `["9"]`}})
			if err != nil || vs[meta.RowKey{Table: "public.t", Key: `["9"]`}].Version.VC["a"] != 1 {
				return fmt.Errorf("version of id 9: %+v, %v", vs, err)
			}
			return nil
		})
	})
	t.Run("WaitProcessed returns for the current WAL position", func(t *testing.T) {
		var lsn string
		if err := e.conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		l, _ := casualdb.ParseLSN(lsn)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := e.cap.WaitProcessed(wctx, l); err != nil {
			t.Fatal(err)
		}
	})
	e.stop()
}

// TestCapturer_Deps checks that a local transaction names, per site, the
// last transaction from it that apply had committed here before it: the
// replication origin and its LSN, as apply records them.
func TestCapturer_Deps(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, s text)`)
	ctx := context.Background()
	if _, err := e.conn.Exec(ctx, `INSERT INTO t VALUES (1, 'before anything was applied')`); err != nil {
		t.Fatal(err)
	}
	// Two transactions "applied" from b, one from c, as apply writes them.
	applied := pgtest.Connect(t, e.pg.DSN())
	for _, stmt := range []string{
		`SELECT pg_replication_origin_create('casualdb_b')`,
		`SELECT pg_replication_origin_create('casualdb_c')`,
	} {
		if _, err := applied.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	applyAs := func(origin, lsn string, id int) {
		t.Helper()
		for _, stmt := range []string{
			`SELECT pg_replication_origin_session_setup('` + origin + `')`,
			`BEGIN`,
			`SELECT pg_replication_origin_xact_setup('` + lsn + `', now())`,
			fmt.Sprintf(`INSERT INTO t VALUES (%d, 'applied from %s')`, id, origin),
			`COMMIT`,
			`SELECT pg_replication_origin_session_reset()`,
		} {
			if _, err := applied.Exec(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
	}
	applyAs("casualdb_b", "0/1000", 2)
	applyAs("casualdb_b", "0/2000", 3)
	applyAs("casualdb_c", "0/500", 4)
	if _, err := e.conn.Exec(ctx, `INSERT INTO t VALUES (5, 'after')`); err != nil {
		t.Fatal(err)
	}
	txs := e.txs(t, 2)
	if len(txs[0].Deps) != 0 {
		t.Errorf("first local tx: deps %v, want none", txs[0].Deps)
	}
	want := map[casualdb.SiteID]uint64{"b": 0x2000, "c": 0x500}
	if fmt.Sprint(txs[1].Deps) != fmt.Sprint(want) {
		t.Errorf("second local tx: deps %v, want %v", txs[1].Deps, want)
	}
	// Applied transactions are followed, not captured: no delays reported.
	e.checkDelays(t, 2)
	// After a restart the dependencies come from casualdb.progress (which
	// apply writes; nothing wrote it here) and from whatever WAL the slot
	// streams again: never less than what the restarted stream shows.
	e.stop()
	e.start(t)
	applyAs("casualdb_c", "0/600", 6)
	if _, err := e.conn.Exec(ctx, `INSERT INTO t VALUES (7, 'after restart')`); err != nil {
		t.Fatal(err)
	}
	txs = e.txs(t, 3)
	if got := txs[2].Deps; got["c"] != 0x600 || got["b"] > 0x2000 || len(got) > 2 {
		t.Errorf("after restart: deps %v, want c:1536 and b at most 8192", got)
	}
	e.checkDelays(t, 3)
}

// TestCapturer_RestartAfterPurge restarts capture after the outbox was
// trimmed empty (every peer had everything) while the slot still confirms
// an older position: the transactions PostgreSQL sends again were captured
// already and must not be appended a second time under new sequences (a
// peer's inbox would drop them as duplicates by id, and then wait for their
// sequences for ever).
func TestCapturer_RestartAfterPurge(t *testing.T) {
	// The slot is confirmed only once an hour: everything is sent again.
	e := newEnvWith(t, `CREATE TABLE t (id int PRIMARY KEY)`, time.Hour)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := e.conn.Exec(ctx, `INSERT INTO t VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
	}
	first := e.txs(t, 3)
	pgtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if st, err := meta.LoadCaptureState(ctx, e.conn, "a"); err != nil || st.OutboxSeq != 3 {
			return fmt.Errorf("capture state %+v, %v; want seq 3", st, err)
		}
		return nil
	})
	e.stop()
	var confirmed string
	if err := e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'casualdb_a'`).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	if l, _ := casualdb.ParseLSN(confirmed); l >= first[0].LSN {
		t.Fatalf("slot confirmed %s already, past the first tx at %s: nothing would be sent again", confirmed, casualdb.FormatLSN(first[0].LSN))
	}
	if err := e.outbox.Purge(ctx, 4); err != nil {
		t.Fatal(err)
	}
	e.restartNATS(t)
	e.start(t)
	if _, err := e.conn.Exec(ctx, `INSERT INTO t VALUES (4)`); err != nil {
		t.Fatal(err)
	}
	got := e.txs(t, 1)
	if got[0].Seq != 4 || got[0].LSN <= first[2].LSN || got[0].Changes[0].Key[0] != "4" {
		t.Errorf("after restart the outbox holds seq %d, lsn %s, key %v; want seq 4, the insert of 4 only (after lsn %s)",
			got[0].Seq, casualdb.FormatLSN(got[0].LSN), got[0].Changes[0].Key, casualdb.FormatLSN(first[2].LSN))
	}
	e.stop()
}

// TestCapturer_ClockSurvivesDeletes writes, deletes and writes one row again
// and again, with the versions recorded lazily in between: every write's
// vector clock counts every earlier write of the row, tombstones included.
// (A tombstone the recorder moved out of the cache while a batch was being
// versioned once made the next insert start a fresh clock, which a peer
// still holding the tombstone's floor judged dead: a divergence.)
func TestCapturer_ClockSurvivesDeletes(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	ctx := context.Background()
	const rounds = 120
	for i := 0; i < rounds; i++ {
		// With a row the cache cannot know, so that versioning reads the
		// database (the window in which the recorder moved the tombstone).
		if _, err := e.conn.Exec(ctx, `INSERT INTO t VALUES (1, $1), ($2, $1)`, i, 1000+i); err != nil {
			t.Fatal(err)
		}
		if _, err := e.conn.Exec(ctx, `DELETE FROM t WHERE id = 1`); err != nil {
			t.Fatal(err)
		}
		// Let the recorder record the tombstone about when the next
		// insert is versioned (it records 20 ms after a batch).
		time.Sleep(time.Duration(15+i%10) * time.Millisecond)
	}
	txs := e.txs(t, 2*rounds)
	n := uint64(0)
	for _, tx := range txs {
		for _, ch := range tx.Changes {
			if ch.Key[0] != "1" {
				continue
			}
			n++
			if got := ch.Version.VC["a"]; got != n {
				t.Fatalf("write %d of row 1 (%s) has clock %v, want a:%d", n, ch.Op, ch.Version.VC, n)
			}
		}
	}
	e.stop()
}

// TestCapturer_Claims: the columns of a unique index other than the primary
// key carry claims, stamped by the change that set each value: an update of
// another column keeps the claim (across a restart too, from the recorded
// metadata), an update of the value makes a new one; a table without such an
// index carries none.
func TestCapturer_Claims(t *testing.T) {
	e := newEnv(t, `CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text);
		CREATE TABLE plain (id int PRIMARY KEY, v text)`)
	ctx := context.Background()
	for _, sql := range []string{
		`INSERT INTO users VALUES (1, 'ann@example.com', 'Ann')`,
		`UPDATE users SET name = 'Anne' WHERE id = 1`,
		`UPDATE users SET email = 'anne@example.com' WHERE id = 1`,
		`INSERT INTO plain VALUES (1, 'x')`,
	} {
		if _, err := e.conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	txs := e.txs(t, 4)
	e.stop()
	e.start(t)
	if _, err := e.conn.Exec(ctx, `UPDATE users SET name = 'Ann' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	txs = append(txs, e.txs(t, 5)[4])
	claim := func(i int) casualdb.Stamp {
		t.Helper()
		ch := txs[i].Changes[0]
		if len(ch.Claims) != 1 {
			t.Fatalf("change %d (%s %s): claims %v, want one for email", i, ch.Op, ch.Table, ch.Claims)
		}
		return ch.Claims["email"].Stamp
	}
	stamp := func(i int) casualdb.Stamp { return txs[i].Changes[0].Version.Stamp() }
	if got, want := claim(0), stamp(0); got != want {
		t.Errorf("insert: claim %v, want its own version %v", got, want)
	}
	if got, want := claim(1), stamp(0); got != want {
		t.Errorf("update of the name: claim %v, want the insert's %v", got, want)
	}
	if got, want := claim(2), stamp(2); got != want || got == stamp(0) {
		t.Errorf("update of the e-mail: claim %v, want its own version %v", got, want)
	}
	if got, want := claim(4), stamp(2); got != want {
		t.Errorf("update of the name after a restart: claim %v, want the e-mail update's %v", got, want)
	}
	if c := txs[3].Changes[0].Claims; c != nil {
		t.Errorf("table without a unique index: claims %v, want none", c)
	}
	pgtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var recorded, wall string
		if err := e.conn.QueryRow(ctx, `SELECT coalesce(claims::text, ''), hlc_wall::text FROM casualdb.row_version WHERE tbl = 'public.users' AND key = '["1"]'`).Scan(&recorded, &wall); err != nil {
			return err
		}
		if wall != fmt.Sprint(stamp(4).HLC.Wall) || !strings.Contains(recorded, `"email"`) || !strings.Contains(recorded, fmt.Sprint(stamp(2).HLC.Wall)) {
			return fmt.Errorf("recorded claims %q at version %s, want email's claim at %v", recorded, wall, stamp(2))
		}
		return nil
	})
	e.stop()
}
