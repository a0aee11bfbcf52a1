package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/casualdb/casualdb"
)

// statusCmd prints a running sidecar's /status: from --admin, or from the
// admin.listen of --config.
func (m *Main) statusCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	var cf configFlags
	cf.register(fs)
	admin := fs.String("admin", "", "the sidecar's admin address, host:port (default: admin.listen of --config)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr := *admin
	if addr == "" {
		cfg, err := cf.load(m.Getenv)
		if err != nil {
			return err
		}
		if addr = cfg.Admin.Listen; addr == "" {
			return fmt.Errorf("%w: admin.listen is empty: the sidecar serves no status (or pass --admin)", casualdb.ErrConfig)
		}
	}
	if strings.HasPrefix(addr, "0.0.0.0:") || strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1:" + addr[strings.LastIndexByte(addr, ':')+1:]
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return fmt.Errorf("status of %s: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("status of the sidecar at %s (is it running?): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("status of %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status of %s: %s", addr, resp.Status)
	}
	if *asJSON {
		_, err := m.Stdout.Write(body)
		return err
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status of %s: %w", addr, err)
	}
	printStatus(m.Stdout, st)
	return nil
}

func printStatus(w io.Writer, st Status) {
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(w, "site %s: %s, up %s\n", st.Site, health, st.Uptime)
	names := sortedKeys(st.Components)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, st.Components[n])
	}
	fmt.Fprintf(w, "capture: %d transactions, outbox at seq %d holding %d, slot %s retains %d bytes of WAL\n",
		st.Capture.Captured, st.Capture.OutboxSeq, st.Capture.OutboxMessages, st.Capture.Slot, st.Capture.SlotRetainedWAL)
	fmt.Fprintf(w, "apply: %d transactions, %d conflicts, %d parked, %d garbled, %d waiting in the inbox\n",
		st.Apply.Applied, st.Apply.Conflicts, st.Apply.Parked, st.Apply.Garbled, st.Apply.InboxMessages)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPEER\tSTATE\tNATS\tSHIPPED\tBEHIND (txs)\tBEHIND (s)\tAPPLIED FROM IT\tITS LAG (s)")
	peers := map[string]bool{}
	for p := range st.Peers {
		peers[p] = true
	}
	for o := range st.Origins {
		peers[o] = true
	}
	for _, p := range sortedKeys(peers) {
		ps, o := st.Peers[p], st.Origins[p]
		state := ps.State
		if state == "" {
			state = "-"
		}
		conn := "down"
		if ps.Connected {
			conn = "connected"
		}
		behind, behindS := "?", "?"
		if ps.Reported {
			behind, behindS = fmt.Sprint(ps.LagTransactions), fmt.Sprintf("%.1f", ps.LagSeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%.3f\n", p, state, conn, ps.Shipped, behind, behindS, o.Applied, o.LagSeconds)
	}
	tw.Flush()
	if st.Cluster != nil {
		fmt.Fprintln(w, "\ncluster (gossip):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SITE\tSTATE\tSINCE\tRING SHARE\tGOSSIP\tNATS")
		for _, m := range st.Cluster.Members {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f%%\t%s\t%s\n", m.Site, m.State, m.Since.Format(time.RFC3339),
				100*st.Cluster.RingOwnership[m.Site], m.Gossip, m.NATSURL)
		}
		tw.Flush()
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
