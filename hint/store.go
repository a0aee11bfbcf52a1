package hint

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Store keeps other origins' transactions for sites that were down when
// they arrived here (hinted handoff): one JetStream stream per site,
// `CASUALDB_HINTS_<site>`, subject `casualdb.hint.<site>.<for>.<origin>`,
// work-queue retention so that a hint handed off is gone.
type Store struct {
	site   casualdb.SiteID
	js     jetstream.JetStream
	stream jetstream.Stream
}

// Hint is one transaction kept for a site: the origin's transport headers
// and the encoded transaction, as the origin shipped it.
type Hint struct {
	For    casualdb.SiteID
	Origin casualdb.SiteID
	Epoch  string
	Seq    uint64 // the origin's outbox sequence
	LSN    uint64 // the origin's commit LSN
	Commit time.Time
	Data   []byte
	// Proof and Cert show that Origin signed Data (apply.Received): they
	// go with the relay, which the receiving site refuses without them
	// when it has TLS on.
	Proof, Cert []byte
}

// StreamName names the site's hint stream.
func StreamName(site casualdb.SiteID) string { return "CASUALDB_HINTS_" + string(site) }

func hintSubject(site, forSite, origin casualdb.SiteID) string {
	return "casualdb.hint." + string(site) + "." + string(forSite) + "." + string(origin)
}

// Open creates (or opens) the site's hint stream.
func Open(ctx context.Context, js jetstream.JetStream, site casualdb.SiteID) (*Store, error) {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       StreamName(site),
		Subjects:   []string{"casualdb.hint." + string(site) + ".>"},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Retention:  jetstream.WorkQueuePolicy,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("open hints %s: %w", StreamName(site), err)
	}
	return &Store{site: site, js: js, stream: st}, nil
}

// Add stores h durably and tells whether it is new. Adding the same
// transaction for the same site twice within two minutes stores it once
// (added is false the second time); later, the receiving site recognises
// the duplicate.
func (hs *Store) Add(ctx context.Context, h Hint) (added bool, err error) {
	m := nats.NewMsg(hintSubject(hs.site, h.For, h.Origin))
	m.Data = h.Data
	m.Header.Set(ship.HeaderOrigin, string(h.Origin))
	m.Header.Set(ship.HeaderEpoch, h.Epoch)
	m.Header.Set(ship.HeaderSeq, strconv.FormatUint(h.Seq, 10))
	m.Header.Set(ship.HeaderLSN, strconv.FormatUint(h.LSN, 10))
	m.Header.Set(ship.HeaderCommit, strconv.FormatInt(h.Commit.UnixMicro(), 10))
	m.Header.Set(nats.MsgIdHdr, "hint-"+string(h.For)+"-"+string(h.Origin)+"-"+casualdb.FormatLSN(h.LSN))
	if len(h.Proof) > 0 && len(h.Cert) > 0 {
		m.Header.Set(ship.HeaderProof, base64.StdEncoding.EncodeToString(h.Proof))
		m.Header.Set(ship.HeaderCert, base64.StdEncoding.EncodeToString(h.Cert))
	}
	ack, err := hs.js.PublishMsg(ctx, m)
	if err != nil {
		return false, fmt.Errorf("keep hint of %s-%s for %s: %w", h.Origin, casualdb.FormatLSN(h.LSN), h.For, err)
	}
	return !ack.Duplicate, nil
}

// Held returns how many hints are kept for each site.
func (hs *Store) Held(ctx context.Context) (map[casualdb.SiteID]uint64, error) {
	prefix := "casualdb.hint." + string(hs.site) + "."
	info, err := hs.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("hints info: %w", err)
	}
	out := map[casualdb.SiteID]uint64{}
	for subj, n := range info.State.Subjects {
		forSite, _, _ := strings.Cut(strings.TrimPrefix(subj, prefix), ".")
		out[casualdb.SiteID(forSite)] += n
	}
	return out, nil
}

// HandoffConfig configures the handing off of one site's hints.
type HandoffConfig struct {
	Hints *Store
	For   casualdb.SiteID
	// URL returns the site's NATS URL now (gossip may change it), and
	// whether the site is up: nothing is tried while it is down.
	URL    func() (url string, up bool)
	Logger *slog.Logger
	// TLS, when set, is the connection's TLS (client certificate, CA).
	TLS *tls.Config
	// IDPrefix prefixes the relays' message ids (ship.Outbox.IDPrefix of
	// For), so that no other peer can publish under them first.
	IDPrefix string
}

// Handoff publishes the hints kept for one site into its inbox, as from
// their origins, and removes each once the inbox holds it.
type Handoff struct {
	cfg    HandoffConfig
	log    *slog.Logger
	handed atomic.Uint64
}

// NewHandoff validates cfg.
func NewHandoff(cfg HandoffConfig) (*Handoff, error) {
	if cfg.Hints == nil || cfg.For == "" || cfg.URL == nil {
		return nil, fmt.Errorf("%w: handoff needs hints, a site and its url", casualdb.ErrConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Handoff{cfg: cfg, log: cfg.Logger.With("component", "handoff", "for", string(cfg.For))}, nil
}

// HandedOff returns the number of hints delivered since start.
func (h *Handoff) HandedOff() uint64 { return h.handed.Load() }

// Run hands off until ctx is done: while the site is up, it takes the hints
// in order and publishes them to its inbox.
func (h *Handoff) Run(ctx context.Context) error {
	hs := h.cfg.Hints
	name := "handoff_" + string(h.cfg.For)
	cons, err := hs.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: "casualdb.hint." + string(hs.site) + "." + string(h.cfg.For) + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("hint consumer for %s: %w", h.cfg.For, err)
	}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		url, up := h.cfg.URL()
		if up {
			err = h.session(ctx, cons, url)
			if ctx.Err() != nil {
				break
			}
			h.log.Debug("handoff interrupted; retrying", "err", err, "in", backoff)
			backoff = min(2*backoff, 5*time.Second)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
	}
	return nil
}

// session hands off hints over one connection until the site is down, the
// connection fails, or nothing is left and the site goes down.
func (h *Handoff) session(ctx context.Context, cons jetstream.Consumer, url string) error {
	// No reconnecting: a publish to a site that went down fails at once
	// and its hint is handed back, instead of waiting in the client's
	// reconnect buffer and reaching the site later, after the hint may have
	// expired here. The next session connects afresh.
	nc, err := nats.Connect(url, append(ship.PeerOptions(h.cfg.TLS, h.cfg.Hints.site), nats.Name("casualdb-handoff-"+string(h.cfg.Hints.site)), nats.Timeout(2*time.Second), nats.NoReconnect())...)
	if err != nil {
		return fmt.Errorf("connect to %s at %s: %w", h.cfg.For, url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream at %s: %w", h.cfg.For, err)
	}
	for ctx.Err() == nil {
		if _, up := h.cfg.URL(); !up {
			return errors.New("site is down")
		}
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return fmt.Errorf("fetch hints: %w", err)
		}
		for m := range batch.Messages() {
			if _, up := h.cfg.URL(); !up {
				// Fetched while the site went down: hand it back.
				_ = m.NakWithDelay(time.Second)
				continue
			}
			hdr := m.Headers()
			out := nats.NewMsg(ship.RelaySubject(h.cfg.For, casualdb.SiteID(hdr.Get(ship.HeaderOrigin)), h.cfg.Hints.site))
			out.Data = m.Data()
			for _, k := range []string{ship.HeaderOrigin, ship.HeaderEpoch, ship.HeaderSeq, ship.HeaderLSN, ship.HeaderCommit, ship.HeaderProof, ship.HeaderCert} {
				if v := hdr.Get(k); v != "" {
					out.Header.Set(k, v)
				}
			}
			lsn, _ := strconv.ParseUint(hdr.Get(ship.HeaderLSN), 10, 64)
			// Not the origin's id: a relay the site refuses (one its
			// origin did not sign) must not make the inbox drop the
			// origin's own copy; apply recognises the second of the two.
			// Prefixed like this site's own ids (ship.Outbox.IDPrefix).
			out.Header.Set(nats.MsgIdHdr, h.cfg.IDPrefix+"relay-"+hdr.Get(ship.HeaderOrigin)+"-"+casualdb.FormatLSN(lsn))
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := js.PublishMsg(pctx, out)
			cancel()
			if err != nil {
				_ = m.NakWithDelay(time.Second)
				return fmt.Errorf("hand off to %s: %w", h.cfg.For, err)
			}
			if err := m.DoubleAck(ctx); err != nil {
				return fmt.Errorf("remove handed-off hint: %w", err)
			}
			h.handed.Add(1)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("fetch hints: %w", err)
		}
	}
	return ctx.Err()
}

// Expiry sums up hints that Expire removed for one site from one origin's
// outbox epoch: what that site will not get from this holder. It can still
// get them from the origin's outbox (which keeps everything a down peer has
// not acknowledged), or from a repair.
type Expiry struct {
	For      casualdb.SiteID
	Origin   casualdb.SiteID
	Epoch    string // of the origin's outbox, which the sequences count in
	Hints    uint64 // how many hints went
	FirstSeq uint64 // the lowest origin outbox sequence among them
	LastSeq  uint64 // the highest
	LastLSN  uint64 // the origin's commit LSN of LastSeq
}

// expireBatch bounds the hints one Expire call looks at, so that a
// housekeeping round stays short; the next call goes on.
const expireBatch = 4096

// Expire removes the hints this stream stored before cutoff, at most a few
// thousand per call, oldest first. A
// hint is never dropped silently: record is called first with what is about
// to go, summed up by site, origin and epoch, and nothing is removed unless
// it returns nil; it should store the summary durably. Expire returns what
// it removed (nil when nothing was old enough).
//
// A hint handed off while Expire runs may be counted as expired too: the
// summary can only overstate what its site misses, never understate it.
func (hs *Store) Expire(ctx context.Context, cutoff time.Time, record func(context.Context, []Expiry) error) ([]Expiry, error) {
	info, err := hs.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("expire hints: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	type key struct {
		forSite, origin casualdb.SiteID
		epoch           string
	}
	var (
		sums  = map[key]*Expiry{}
		order []key
		cut   uint64 // every message below it is summed up
		all   = "casualdb.hint." + string(hs.site) + ".>"
	)
	seq := info.State.FirstSeq
	for range expireBatch {
		// The next message at or after seq: work-queue acknowledgements
		// leave holes in the sequence.
		m, err := hs.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(all))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("expire hints: read hint at %d: %w", seq, err)
		}
		// Stored in arrival order: the first one young enough ends the
		// expired prefix.
		if !m.Time.Before(cutoff) {
			break
		}
		forSite, origin := hs.parseSubject(m.Subject)
		k := key{forSite, origin, m.Header.Get(ship.HeaderEpoch)}
		e, ok := sums[k]
		if !ok {
			e = &Expiry{For: forSite, Origin: origin, Epoch: k.epoch}
			sums[k] = e
			order = append(order, k)
		}
		oseq, _ := strconv.ParseUint(m.Header.Get(ship.HeaderSeq), 10, 64)
		lsn, _ := strconv.ParseUint(m.Header.Get(ship.HeaderLSN), 10, 64)
		e.Hints++
		if e.FirstSeq == 0 || oseq < e.FirstSeq {
			e.FirstSeq = oseq
		}
		if oseq >= e.LastSeq {
			e.LastSeq, e.LastLSN = oseq, lsn
		}
		seq = m.Sequence + 1
		cut = seq
	}
	if len(order) == 0 {
		return nil, nil
	}
	out := make([]Expiry, 0, len(order))
	for _, k := range order {
		out = append(out, *sums[k])
	}
	if err := record(ctx, out); err != nil {
		return nil, fmt.Errorf("expire hints: record before removing: %w", err)
	}
	// Only messages below cut go: the ones summed up (less any handed off
	// meanwhile); later ones have higher sequences.
	if err := hs.stream.Purge(ctx, jetstream.WithPurgeSequence(cut)); err != nil {
		return nil, fmt.Errorf("expire hints below %d: %w", cut, err)
	}
	return out, nil
}

// parseSubject returns the site and origin of a hint's subject,
// casualdb.hint.<site>.<for>.<origin>.
func (hs *Store) parseSubject(subj string) (forSite, origin casualdb.SiteID) {
	rest := strings.TrimPrefix(subj, "casualdb.hint."+string(hs.site)+".")
	f, o, _ := strings.Cut(rest, ".")
	return casualdb.SiteID(f), casualdb.SiteID(o)
}
