package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serverClock returns how far the server's wall clock is ahead of ours,
// measured by a round trip to it.
func serverClock(t *testing.T, s *Server) time.Duration {
	t.Helper()
	conn := Connect(t, s.DSN())
	before := time.Now()
	var now time.Time
	if err := conn.QueryRow(context.Background(), "SELECT clock_timestamp()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	return now.Sub(before.Add(after.Sub(before) / 2))
}

func TestServer_FakeTime(t *testing.T) {
	t.Parallel()
	const slack = time.Minute
	skewed := NewServerWith(t, Options{Name: "ahead", FakeTime: "+1h"})
	real := NewServer(t, "real")

	if d := serverClock(t, skewed); d < time.Hour-slack || d > time.Hour+slack {
		t.Errorf("skewed server's clock is %v ahead of ours, want about 1h", d)
	}
	if d := serverClock(t, real); d < -slack || d > slack {
		t.Errorf("unskewed server's clock is %v ahead of ours, want about 0", d)
	}
	// The skew is the postmaster's and its children's, not ours.
	if v := os.Getenv("FAKETIME"); v != "" {
		t.Errorf("FAKETIME=%s leaked into the test process", v)
	}
	if v := os.Getenv("LD_PRELOAD"); strings.Contains(v, "faketime") {
		t.Errorf("LD_PRELOAD=%s leaked into the test process", v)
	}
	t.Run("commit timestamps", func(t *testing.T) {
		// now() inside a transaction is what the WAL's commit record carries
		// (give or take the transaction's length): the skew reaches capture.
		conn := Connect(t, skewed.DSN())
		var ahead bool
		if err := conn.QueryRow(context.Background(), "SELECT now() > $1::timestamptz", time.Now().Add(30*time.Minute)).Scan(&ahead); err != nil {
			t.Fatal(err)
		}
		if !ahead {
			t.Error("now() in a transaction is not ahead")
		}
	})
	t.Run("survives restart", func(t *testing.T) {
		if err := skewed.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := skewed.Restart(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d := serverClock(t, skewed); d < time.Hour-slack || d > time.Hour+slack {
			t.Errorf("after restart the clock is %v ahead, want about 1h", d)
		}
	})
}

func TestStart_FakeTimeErrors(t *testing.T) {
	// Not parallel: it changes the environment.
	for _, offset := range []string{"1h", "+1w", "@2020-01-01 00:00:00", "2020-01-01 00:00:00", "+"} {
		if s, err := Start(context.Background(), Options{Dir: t.TempDir(), FakeTime: offset}); err == nil {
			s.Stop(context.Background())
			t.Errorf("Start with FakeTime %q succeeded", offset)
		}
	}
	t.Setenv(fakeTimeLibEnv, filepath.Join(t.TempDir(), "missing.so"))
	_, err := Start(context.Background(), Options{Dir: t.TempDir(), FakeTime: "+1h"})
	if !errors.Is(err, ErrNoFakeTime) {
		t.Fatalf("Start without libfaketime: %v, want ErrNoFakeTime", err)
	}
	if !strings.Contains(err.Error(), "install the Debian package faketime") {
		t.Errorf("error %q does not say what to install", err)
	}
}

func TestFakeTimeEnv_KeepsPreload(t *testing.T) {
	if _, err := FakeTimeLib(); err != nil {
		t.Fatal(err)
	}
	env, err := fakeTimeEnv("-90", []string{"LD_PRELOAD=/a.so", "X=1", "LD_PRELOAD=/b.so"})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(env, " ")
	if !strings.Contains(got, "libfaketime.so.1:/b.so ") || !strings.Contains(got, "FAKETIME=-90 ") {
		t.Errorf("env = %q, want our library before /b.so and FAKETIME=-90", got)
	}
}
