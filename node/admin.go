package node

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/check"
	"github.com/casualdb/casualdb/hint"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Status is what /status returns.
type Status struct {
	Site       string                  `json:"site"`
	Healthy    bool                    `json:"healthy"`
	Uptime     string                  `json:"uptime"`
	Components map[string]string       `json:"components"`
	Tables     []string                `json:"tables"`
	Capture    CaptureStatus           `json:"capture"`
	Apply      ApplyStatus             `json:"apply"`
	Peers      map[string]PeerStatus   `json:"peers"`
	Origins    map[string]OriginStatus `json:"origins"`
	Cluster    *ClusterStatus          `json:"cluster,omitempty"` // with gossip (cluster.bind)
	// With gossip: what this site misses because a holder let the hints
	// for it expire (cleared once applied), and the hints this site, as a
	// holder, expired (casualdb.hint_expiry).
	Missing      []hint.MissingStatus `json:"missing,omitempty"`
	HintExpiries []hint.ExpiryStatus  `json:"hint_expiries,omitempty"`
	// AntiEntropy: the background checks (antientropy.interval), when on.
	AntiEntropy *AntiEntropyStatus `json:"antientropy,omitempty"`
	// NATSRefused counts the clients this site's NATS server refused (TLS
	// on: no verified certificate naming a site).
	NATSRefused uint64 `json:"nats_refused_clients"`
	// Warnings need an operator's attention without making the sidecar
	// unhealthy (a restart would not help): /healthz lists them after ok.
	Warnings []string `json:"warnings,omitempty"`
}

// CaptureStatus describes capture.
type CaptureStatus struct {
	Slot             string `json:"slot"`
	SlotRetainedWAL  int64  `json:"slot_retained_wal_bytes"`
	Captured         uint64 `json:"captured_transactions"`
	ProcessedLSN     string `json:"processed_lsn"`
	OutboxSeq        uint64 `json:"outbox_last_seq"`
	OutboxMessages   uint64 `json:"outbox_messages"`
	FollowedApplyTxs uint64 `json:"followed_apply_transactions"`
	// W-durability: the outbox sequence up to which every transaction is
	// held by cluster.w sites, and the LSN casualdb.wait_durable compares.
	W          int    `json:"w"`
	DurableSeq uint64 `json:"w_durable_seq"`
	DurableLSN string `json:"w_durable_lsn"`
}

// ApplyStatus describes apply.
type ApplyStatus struct {
	Applied       uint64 `json:"applied_transactions"`
	Skipped       uint64 `json:"skipped_duplicates"`
	Changes       uint64 `json:"row_changes"`
	Conflicts     uint64 `json:"conflicts"`
	Parked        uint64 `json:"parked"`
	Garbled       uint64 `json:"garbled_messages"`
	DepWaits      uint64 `json:"dependency_waits"`
	Resends       uint64 `json:"resend_requests"`
	GCRuns        uint64 `json:"tombstone_collections"`
	Collected     uint64 `json:"tombstones_collected"`
	InboxMessages uint64 `json:"inbox_messages"`
	// Unproven: transactions from their origin whose signature header did
	// not fit them (with gossip); applied, but never relayable as hints.
	Unproven uint64 `json:"unproven_transactions"`
	// Misnamed: origin names in the inbox that are no site names (a
	// peer's relays under them); their messages stay unread.
	Misnamed uint64 `json:"misnamed_origins"`
	// Strangers: origins that are neither peers nor applied before whose
	// messages wait unread (apply reads at most 64 such).
	Strangers uint64 `json:"unread_stranger_origins"`
}

// PeerStatus describes shipping to one peer.
type PeerStatus struct {
	Connected bool   `json:"connected"`
	Shipped   uint64 `json:"shipped_transactions"`
	NATSURL   string `json:"nats_url"`
	// With gossip: the peer's state, and how far it is behind this site's
	// outbox by its own account (Reported: its digest has arrived).
	State      string `json:"state,omitempty"`
	Reported   bool   `json:"reported"`
	AppliedSeq uint64 `json:"applied_seq"`
	// AppliedFrom is the peer's gossiped digest: the last sequence it has
	// applied from every origin (in that origin's current epoch or not).
	AppliedFrom     map[string]uint64 `json:"applied_from,omitempty"`
	LagTransactions uint64            `json:"lag_transactions"`
	LagSeconds      float64           `json:"lag_seconds"`
	// Hints: transactions of other origins kept here for the peer while it
	// was down, and how many were handed off to it since start.
	HintsHeld   uint64 `json:"hints_held"`
	HintsHanded uint64 `json:"hints_handed_off"`
	// HintsExpired counts the hints kept here for the peer that were
	// expired (cluster.hint_retention) since start.
	HintsExpired uint64 `json:"hints_expired"`
	// LateHints counts the hints kept for the peer, since start, for
	// transactions received here before gossip declared it down (late
	// hints: they arrived while it was failing).
	LateHints uint64 `json:"late_hints"`
	// RelayHints counts the hints kept for the peer, since start, for
	// transactions of an origin that went down which the peer had not
	// applied (relayed from here, since the origin cannot ship them).
	RelayHints uint64 `json:"relay_hints"`
}

// OriginStatus describes what was applied from one origin.
type OriginStatus struct {
	Applied     uint64    `json:"applied_transactions"`
	Seq         uint64    `json:"last_seq"`
	LastCommit  time.Time `json:"last_commit_time"`
	LagSeconds  float64   `json:"lag_seconds"`
	LastApplied time.Time `json:"last_applied_at"`
	// Held: its transactions taken from the inbox and waiting here for
	// their turn (a missing predecessor, or what they causally depend on).
	Held int `json:"held_transactions"`
}

// Status returns a snapshot of the sidecar.
func (s *Node) Status() Status {
	st := Status{Site: s.cfg.Site, Healthy: true, Uptime: time.Since(s.started).Round(time.Second).String(),
		Components: map[string]string{}, Peers: map[string]PeerStatus{}, Origins: map[string]OriginStatus{}}
	s.mu.Lock()
	for name, err := range s.health {
		if err != nil {
			st.Healthy = false
			st.Components[name] = "failing: " + err.Error()
		} else {
			st.Components[name] = "running"
		}
	}
	st.Capture.SlotRetainedWAL = s.slotLag
	st.Apply.GCRuns, st.Apply.Collected = s.gcRuns, s.collected
	st.Capture.OutboxMessages = s.outboxMsg
	st.Capture.W, st.Capture.DurableSeq, st.Capture.DurableLSN = s.cfg.Cluster.W, s.durableSeq, casualdb.FormatLSN(s.durableLSN)
	st.Apply.InboxMessages = s.inboxMsg
	if s.inbox != nil {
		st.Apply.Unproven, st.Apply.Misnamed = s.inbox.Unproven(), s.inbox.Misnamed()
	}
	if s.server != nil {
		st.NATSRefused = s.server.Refused()
	}
	if s.cfg.AntiEntropy.Interval > 0 {
		ae := s.ae
		st.AntiEntropy = &ae
	}
	s.mu.Unlock()
	for _, t := range s.tables {
		st.Tables = append(st.Tables, t.String())
	}
	sort.Strings(st.Tables)
	st.Capture.Slot = s.cfg.SlotName()
	if s.capturer != nil {
		cs := s.capturer.Stats()
		st.Capture.Captured, st.Capture.OutboxSeq, st.Capture.FollowedApplyTxs = cs.Captured, cs.LastSeq, cs.Followed
		st.Capture.ProcessedLSN = casualdb.FormatLSN(cs.Processed)
	}
	if s.applier != nil {
		as := s.applier.Stats()
		st.Apply.Applied, st.Apply.Skipped, st.Apply.Changes = as.Applied, as.Skipped, as.Changes
		st.Apply.Conflicts, st.Apply.Parked, st.Apply.Garbled = as.Conflicts, as.Parked, as.Garbled
		st.Apply.DepWaits, st.Apply.Resends, st.Apply.Strangers = as.DependencyWaits, as.Resends, as.Strangers
		for o, os := range as.Origins {
			st.Origins[string(o)] = OriginStatus{Applied: os.Applied, Seq: os.Seq, LastCommit: os.LastCommit, LastApplied: os.LastApplied, LagSeconds: os.Lag().Seconds(), Held: os.Held}
		}
		if s.keeper != nil {
			st.Missing = s.keeper.Missing(as.Origins)
		}
		for _, m := range st.Missing {
			st.Warnings = append(st.Warnings, m.Warning())
		}
	}
	for _, p := range s.peerList() {
		if sh := s.shipper(p); sh != nil {
			st.Peers[string(p)] = PeerStatus{Connected: sh.Connected(), Shipped: sh.Shipped(), NATSURL: sh.PeerURL()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.clusterStatus(ctx, &st)
	return st
}

func (s *Node) adminHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{s: s}, s.delays, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if s.cfg.Admin.PProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		st := s.Status()
		// Without the token (when there is one), health only: which
		// components fail, not their errors, and how many warnings.
		detail := s.adminToken == "" || authorized(r, s.adminToken)
		if !st.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
			if !detail {
				var failing []string
				for name, state := range st.Components {
					if state != "running" {
						failing = append(failing, name)
					}
				}
				sort.Strings(failing)
				_, _ = w.Write([]byte("failing: " + strings.Join(failing, ", ") + "\n"))
				return
			}
			_ = json.NewEncoder(w).Encode(st.Components)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
		if !detail {
			if len(st.Warnings) > 0 {
				fmt.Fprintf(w, "warnings: %d\n", len(st.Warnings))
			}
			return
		}
		for _, warn := range st.Warnings {
			_, _ = w.Write([]byte("warning: " + warn + "\n"))
		}
	})
	mux.HandleFunc("/check", s.serveCheck)
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Status())
	})
	return requireToken(s.adminToken, mux)
}

// authorized tells whether r carries the bearer token.
func authorized(r *http.Request, token string) bool {
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+token)) == 1
}

// requireToken lets through the requests that carry the bearer token (every
// request when token is empty), and /healthz always: probes need no secret,
// and without the token it tells nothing but health.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && !authorized(r, token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="casualdb"`)
			http.Error(w, "a bearer token is required (admin.token_file)", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// collector exposes the sidecar's counters at scrape time.
type collector struct{ s *Node }

var (
	descCaptured   = prometheus.NewDesc("casualdb_captured_transactions_total", "Local transactions captured into the outbox.", nil, nil)
	descShipped    = prometheus.NewDesc("casualdb_shipped_transactions_total", "Transactions a peer's inbox acknowledged.", []string{"peer"}, nil)
	descPeerUp     = prometheus.NewDesc("casualdb_peer_connected", "1 when the peer's NATS is reachable.", []string{"peer"}, nil)
	descApplied    = prometheus.NewDesc("casualdb_applied_transactions_total", "Remote transactions applied, by origin.", []string{"origin"}, nil)
	descLag        = prometheus.NewDesc("casualdb_apply_lag_seconds", "Commit at the origin to applied here, of the last transaction applied from it.", []string{"origin"}, nil)
	descHeld       = prometheus.NewDesc("casualdb_apply_held_transactions", "The origin's transactions taken from the inbox and waiting here for their turn (a missing predecessor, or what they causally depend on).", []string{"origin"}, nil)
	descConflicts  = prometheus.NewDesc("casualdb_conflicts_total", "True conflicts (concurrent versions) resolved and logged.", nil, nil)
	descParked     = prometheus.NewDesc("casualdb_parked_total", "Changes or messages parked in casualdb.parked.", nil, nil)
	descGarbled    = prometheus.NewDesc("casualdb_garbled_messages_total", "Transport messages that did not decode (parked).", nil, nil)
	descSkipped    = prometheus.NewDesc("casualdb_duplicate_transactions_total", "Redelivered transactions recognised and skipped.", nil, nil)
	descDepWaits   = prometheus.NewDesc("casualdb_dependency_waits_total", "Times a remote transaction was held back until what it causally depends on (from another origin) was applied.", nil, nil)
	descCollected  = prometheus.NewDesc("casualdb_tombstones_collected_total", "Tombstones (version metadata of deleted rows) removed once every site had seen them.", nil, nil)
	descSlotWAL    = prometheus.NewDesc("casualdb_slot_retained_wal_bytes", "WAL the replication slot keeps on disk.", nil, nil)
	descOutbox     = prometheus.NewDesc("casualdb_outbox_messages", "Transactions held in the outbox (not yet acknowledged by every peer).", nil, nil)
	descInbox      = prometheus.NewDesc("casualdb_inbox_messages", "Transactions waiting in the inbox.", nil, nil)
	descUnproven   = prometheus.NewDesc("casualdb_unproven_transactions_total", "With gossip and TLS: transactions from their origin whose signature header did not fit them; applied, but a relay of them as hints is refused.", nil, nil)
	descMisnamed   = prometheus.NewDesc("casualdb_inbox_misnamed_origins", "Origin names in the inbox that are no site names (a peer's relays under them): their messages stay unread.", nil, nil)
	descStrangers  = prometheus.NewDesc("casualdb_inbox_unread_stranger_origins", "Origins that are neither peers nor applied before whose inbox messages wait unread: apply reads at most 64 such (a peer relaying under invented names).", nil, nil)
	descRefused    = prometheus.NewDesc("casualdb_nats_refused_clients_total", "Clients this site's NATS server refused (no verified certificate naming a site).", nil, nil)
	descHealthy    = prometheus.NewDesc("casualdb_component_up", "1 when the component runs, 0 when it is failing.", []string{"component"}, nil)
	descMember     = prometheus.NewDesc("casualdb_member_alive", "With gossip: 1 when the site is alive (or suspect), 0 when it failed or left.", []string{"site"}, nil)
	descOwnership  = prometheus.NewDesc("casualdb_ring_ownership_ratio", "With gossip: the site's share of the hash ring.", []string{"site"}, nil)
	descPeerLagTx  = prometheus.NewDesc("casualdb_peer_lag_transactions", "With gossip: transactions of this site's outbox the peer has not applied, by its own account.", []string{"peer"}, nil)
	descNotDurable = prometheus.NewDesc("casualdb_not_w_durable_transactions", "Local transactions in the outbox not yet held by cluster.w sites.", nil, nil)
	descResends    = prometheus.NewDesc("casualdb_resend_requests_total", "Times this site asked an origin to ship again what it had waited too long for (a sequence gap).", nil, nil)
	descHints      = prometheus.NewDesc("casualdb_hints_held", "With gossip: other origins' transactions kept here for a site that was down (hinted handoff).", []string{"site"}, nil)
	descHanded     = prometheus.NewDesc("casualdb_hints_handed_off_total", "With gossip: hints delivered to the site they were kept for.", []string{"site"}, nil)
	descPeerLagS   = prometheus.NewDesc("casualdb_peer_lag_seconds", "With gossip: age of the oldest transaction of this site the peer has not applied (0 when it has them all).", []string{"peer"}, nil)
	descRelay      = prometheus.NewDesc("casualdb_relay_hints_total", "With gossip: hints kept for the live site, when an origin stopped being alive, for that origin's transactions received here that the site had not applied.", []string{"site"}, nil)
	descLate       = prometheus.NewDesc("casualdb_late_hints_total", "With gossip: hints kept for the site when it stopped being alive, for transactions received here while it was failing that it had not applied.", []string{"site"}, nil)
	descExpired    = prometheus.NewDesc("casualdb_hints_expired_total", "With gossip: hints kept here for the site that were removed after cluster.hint_retention (recorded in casualdb.hint_expiry first).", []string{"site"}, nil)
	descAERuns     = prometheus.NewDesc("casualdb_antientropy_runs_total", "With antientropy.interval: background checks this site ran (failed ones included).", nil, nil)
	descAEFailed   = prometheus.NewDesc("casualdb_antientropy_failed_runs_total", "With antientropy.interval: background checks that could not run to the end.", nil, nil)
	descAERows     = prometheus.NewDesc("casualdb_antientropy_rows_read_total", "With antientropy.interval: rows the background checks this site ran read, at every site checked.", nil, nil)
	descAEDiffer   = prometheus.NewDesc("casualdb_antientropy_differing_rows", "With antientropy.interval: rows that differed between sites at the last background check (before its repairs).", nil, nil)
	descAERepairs  = prometheus.NewDesc("casualdb_antientropy_repairs_total", "With antientropy.interval: rows the background checks repaired (written again at the site holding the winner).", nil, nil)
	descAELast     = prometheus.NewDesc("casualdb_antientropy_last_run_timestamp_seconds", "With antientropy.interval: when this site last ran a background check (0: never).", nil, nil)
	descMissed     = prometheus.NewDesc("casualdb_missed_transactions", "With gossip: transactions of the origin this site has not applied up to the last hint a holder expired for it; they come only from the origin's outbox or a repair (0: none missing).", []string{"origin"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCaptured, descShipped, descPeerUp, descApplied, descLag, descHeld, descConflicts, descParked, descGarbled, descSkipped, descDepWaits, descCollected, descSlotWAL, descOutbox, descInbox, descUnproven, descMisnamed, descStrangers, descRefused, descHealthy, descMember, descOwnership, descPeerLagTx, descPeerLagS, descHints, descHanded, descLate, descRelay, descExpired, descMissed, descResends, descNotDurable, descAERuns, descAEFailed, descAERows, descAEDiffer, descAERepairs, descAELast} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(descCaptured, st.Capture.Captured)
	for p, ps := range st.Peers {
		counter(descShipped, ps.Shipped, p)
		up := 0.0
		if ps.Connected {
			up = 1
		}
		gauge(descPeerUp, up, p)
	}
	for o, os := range st.Origins {
		counter(descApplied, os.Applied, o)
		gauge(descLag, os.LagSeconds, o)
		gauge(descHeld, float64(os.Held), o)
	}
	counter(descConflicts, st.Apply.Conflicts)
	counter(descParked, st.Apply.Parked)
	counter(descGarbled, st.Apply.Garbled)
	counter(descSkipped, st.Apply.Skipped)
	counter(descDepWaits, st.Apply.DepWaits)
	counter(descResends, st.Apply.Resends)
	gauge(descNotDurable, float64(st.Capture.OutboxSeq-min(st.Capture.OutboxSeq, st.Capture.DurableSeq)))
	counter(descCollected, st.Apply.Collected)
	gauge(descSlotWAL, float64(st.Capture.SlotRetainedWAL))
	gauge(descOutbox, float64(st.Capture.OutboxMessages))
	gauge(descInbox, float64(st.Apply.InboxMessages))
	counter(descUnproven, st.Apply.Unproven)
	gauge(descMisnamed, float64(st.Apply.Misnamed))
	gauge(descStrangers, float64(st.Apply.Strangers))
	counter(descRefused, st.NATSRefused)
	if st.Cluster != nil {
		for _, m := range st.Cluster.Members {
			alive := 0.0
			if m.State == "alive" || m.State == "suspect" {
				alive = 1
			}
			gauge(descMember, alive, m.Site)
		}
		for site, share := range st.Cluster.RingOwnership {
			gauge(descOwnership, share, site)
		}
		for p, ps := range st.Peers {
			if ps.Reported {
				gauge(descPeerLagTx, float64(ps.LagTransactions), p)
				gauge(descPeerLagS, ps.LagSeconds, p)
			}
			gauge(descHints, float64(ps.HintsHeld), p)
			counter(descHanded, ps.HintsHanded, p)
			counter(descExpired, ps.HintsExpired, p)
			counter(descLate, ps.LateHints, p)
			counter(descRelay, ps.RelayHints, p)
		}
		missed := map[string]uint64{}
		for o := range st.Origins {
			missed[o] = 0
		}
		for _, m := range st.Missing {
			missed[m.Origin] = max(missed[m.Origin], m.Missing)
		}
		for o, n := range missed {
			gauge(descMissed, float64(n), o)
		}
	}
	if ae := st.AntiEntropy; ae != nil {
		counter(descAERuns, ae.Runs)
		counter(descAEFailed, ae.Failed)
		counter(descAERows, ae.RowsRead)
		gauge(descAEDiffer, float64(ae.Differ))
		counter(descAERepairs, ae.Repairs)
		last := 0.0
		if !ae.LastRun.IsZero() {
			last = float64(ae.LastRun.Unix())
		}
		gauge(descAELast, last)
	}
	for name, state := range st.Components {
		up := 0.0
		if state == "running" {
			up = 1
		}
		gauge(descHealthy, up, name)
	}
}

// CheckResult is what /check returns.
type CheckResult struct {
	check.Report
	// Skipped names the peers the check could not reach.
	Skipped []string `json:"skipped,omitempty"`
}

// serveCheck runs a check (Node.Check) for GET /check?table=T&buckets=N
// (POST ...&repair=1 to repair what differs):
// 200 with the report whatever it found, 400 for bad parameters, 500 when
// the check could not run.
func (s *Node) serveCheck(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Origin") != "" {
		// A web page's request: a check may write (repair), and nothing
		// in a browser has a reason to ask.
		http.Error(w, "/check does not answer browsers (Origin header)", http.StatusForbidden)
		return
	}
	opts := check.Options{Tables: r.URL.Query()["table"], Repair: r.URL.Query().Get("repair") == "1"}
	if opts.Repair && r.Method != http.MethodPost {
		http.Error(w, "repair=1 writes: POST it", http.StatusMethodNotAllowed)
		return
	}
	if b := r.URL.Query().Get("buckets"); b != "" {
		n, err := strconv.Atoi(b)
		if err != nil || n <= 0 || n > 1<<20 {
			http.Error(w, "buckets: want a positive number up to 1048576", http.StatusBadRequest)
			return
		}
		opts.Buckets = n
	}
	for i, t := range opts.Tables {
		tbl, err := capture.ParseTable(t)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !slices.ContainsFunc(s.tables, func(x capture.Table) bool { return x.String() == tbl.String() }) {
			http.Error(w, fmt.Sprintf("table %s is not replicated (database.tables)", tbl), http.StatusBadRequest)
			return
		}
		opts.Tables[i] = tbl.String()
	}
	rep, skipped, err := s.Check(r.Context(), opts)
	if err != nil {
		http.Error(w, "check: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(CheckResult{Report: rep, Skipped: skipped})
}
