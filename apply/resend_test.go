package apply

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

// TestApplier_AskResend: a gap is reported to the origin only once it has
// lasted GapResend, from the first missing sequence, then at doubling
// intervals; a gap that closes starts afresh.
func TestApplier_AskResend(t *testing.T) {
	var asked []uint64
	a := &Applier{
		cfg: Config{GapResend: 20 * time.Millisecond, Resend: func(_ context.Context, origin casualdb.SiteID, from uint64) error {
			if origin != "b" {
				t.Errorf("asked %s, want b", origin)
			}
			asked = append(asked, from)
			return nil
		}},
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		progress: map[casualdb.SiteID]meta.Progress{"b": {Seq: 4}},
	}
	a.stats.Origins = map[casualdb.SiteID]OriginStats{}
	ctx := context.Background()
	a.askResend(ctx, "b") // the gap is new
	if len(asked) != 0 {
		t.Fatalf("asked at once: %v", asked)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(asked) < 1 && time.Now().Before(deadline) {
		a.askResend(ctx, "b")
		time.Sleep(time.Millisecond)
	}
	if len(asked) != 1 || asked[0] != 5 {
		t.Fatalf("asked %v, want from 5 once", asked)
	}
	if got := a.resend["b"].every; got != 40*time.Millisecond {
		t.Errorf("after the first request the interval is %s, want 40ms (doubled)", got)
	}
	for len(asked) < 2 && time.Now().Before(deadline) {
		a.askResend(ctx, "b")
		time.Sleep(time.Millisecond)
	}
	if len(asked) != 2 || a.resend["b"].every != 80*time.Millisecond {
		t.Errorf("asked %v, interval %s; want a second request, then 80ms", asked, a.resend["b"].every)
	}
	if a.stats.Resends != 2 {
		t.Errorf("Resends = %d, want 2", a.stats.Resends)
	}
}
