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
	"github.com/casualdb/casualdb/node"
)

// statusCmd prints a running sidecar's /status: from --admin, or from the
// admin.listen of --config.
func (m *Main) statusCmd(ctx context.Context, args []string) error {
	fs, af := m.adminFlags("status", "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body, err := m.adminGet(ctx, af, "/status", 10*time.Second)
	if err != nil {
		return err
	}
	if af.asJSON {
		_, err := m.Stdout.Write(body)
		return err
	}
	var st node.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	printStatus(m.Stdout, st)
	return nil
}

func printStatus(w io.Writer, st node.Status) {
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(w, "site %s: %s, up %s\n", st.Site, health, st.Uptime)
	for _, warn := range st.Warnings {
		fmt.Fprintf(w, "  WARNING: %s\n", warn)
	}
	names := sortedKeys(st.Components)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, st.Components[n])
	}
	fmt.Fprintf(w, "capture: %d transactions, outbox at seq %d holding %d, slot %s retains %d bytes of WAL\n",
		st.Capture.Captured, st.Capture.OutboxSeq, st.Capture.OutboxMessages, st.Capture.Slot, st.Capture.SlotRetainedWAL)
	fmt.Fprintf(w, "apply: %d transactions, %d conflicts, %d parked, %d garbled, %d waiting in the inbox\n",
		st.Apply.Applied, st.Apply.Conflicts, st.Apply.Parked, st.Apply.Garbled, st.Apply.InboxMessages)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPEER\tSTATE\tNATS\tSHIPPED\tBEHIND (txs)\tBEHIND (s)\tAPPLIED FROM IT\tITS LAG (s)\tWAITING HERE\tHINTS HELD\tHANDED OFF")
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%.3f\t%d\t%d\t%d\n", p, state, conn, ps.Shipped, behind, behindS, o.Applied, o.LagSeconds,
			o.Held, ps.HintsHeld, ps.HintsHanded)
	}
	tw.Flush()
	printHints(w, st)
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

// printHints prints what this site misses because hints for it expired at
// a holder, and the hints it expired as a holder.
func printHints(w io.Writer, st node.Status) {
	if len(st.Missing) > 0 {
		fmt.Fprintln(w, "\nmissing transactions (hints for this site expired at their holder; they come only from the origin's outbox or a repair):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ORIGIN\tHOLDER\tEPOCH\tUP TO SEQ\tAPPLIED SEQ\tMISSING\tHINTS EXPIRED")
		for _, m := range st.Missing {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\n", m.Origin, m.Holder, m.Epoch, m.UpToSeq, m.AppliedSeq, m.Missing, m.HintsExpired)
		}
		tw.Flush()
	}
	if len(st.HintExpiries) > 0 {
		fmt.Fprintln(w, "\nhints expired here (cluster.hint_retention):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FOR\tORIGIN\tEPOCH\tHINTS\tSEQS\tLAST EXPIRED\tSTATE")
		for _, e := range st.HintExpiries {
			state := "open: the site has not applied past them"
			if e.Resolved {
				state = "resolved"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d-%d\t%s\t%s\n", e.For, e.Origin, e.Epoch, e.Hints, e.FirstSeq, e.LastSeq, e.LastExpired.Format(time.RFC3339), state)
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

// adminFlag are the flags of a subcommand that talks to the running
// sidecar's admin endpoint.
type adminFlag struct {
	cf        configFlags
	admin     string
	asJSON    bool
	tokenFile string
	ca        string
}

// adminFlags returns the flag set of such a subcommand; jsonHelp describes
// its --json.
func (m *Main) adminFlags(name, jsonHelp string) (*flag.FlagSet, *adminFlag) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	af := &adminFlag{}
	af.cf.register(fs)
	fs.StringVar(&af.admin, "admin", "", "the sidecar's admin address, host:port or https://host:port (default: admin.listen of --config)")
	fs.BoolVar(&af.asJSON, "json", false, jsonHelp)
	fs.StringVar(&af.tokenFile, "token-file", "", "file of the admin bearer token (default: admin.token_file of --config, or CASUALDB_ADMIN_TOKEN)")
	fs.StringVar(&af.ca, "ca", "", "PEM file of the authority of the admin endpoint's certificate, with https (default: admin.tls.ca of --config)")
	return fs, af
}

// endpoint resolves the admin endpoint: from the flags, else from the
// configuration's admin.* (and CASUALDB_ADMIN_TOKEN).
func (m *Main) endpoint(af *adminFlag) (node.AdminClient, error) {
	ep := node.AdminClient{CA: af.ca}
	cfg := node.AdminConfig{Token: m.Getenv("CASUALDB_ADMIN_TOKEN"), TokenFile: af.tokenFile}
	addr, scheme := af.admin, "http"
	if rest, ok := strings.CutPrefix(addr, "https://"); ok {
		addr, scheme = rest, "https"
	}
	if addr == "" {
		full, err := af.cf.load(m.Getenv)
		if err != nil {
			return ep, err
		}
		if addr = full.Admin.Listen; addr == "" {
			return ep, fmt.Errorf("%w: admin.listen is empty: the sidecar serves no admin endpoint (or pass --admin)", casualdb.ErrConfig)
		}
		if full.Admin.TLS.Cert != "" {
			scheme = "https"
		}
		if ep.CA == "" {
			ep.CA = full.Admin.TLS.CA
		}
		if cfg.TokenFile == "" {
			cfg = full.Admin
		}
	}
	if strings.HasPrefix(addr, "0.0.0.0:") || strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1:" + addr[strings.LastIndexByte(addr, ':')+1:]
	}
	if ep.CA != "" {
		scheme = "https"
	}
	var err error
	if ep.Token, err = cfg.BearerToken(); err != nil {
		return ep, err
	}
	ep.URL = scheme + "://" + addr
	return ep, nil
}

// adminGet reads path from a running sidecar's admin endpoint (endpoint).
func (m *Main) adminGet(ctx context.Context, af *adminFlag, path string, timeout time.Duration) ([]byte, error) {
	return m.adminDo(ctx, af, http.MethodGet, path, timeout)
}

// adminDo is adminGet with another method.
func (m *Main) adminDo(ctx context.Context, af *adminFlag, method, path string, timeout time.Duration) ([]byte, error) {
	ep, err := m.endpoint(af)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return ep.Do(rctx, method, path)
}
