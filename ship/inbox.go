package ship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go/jetstream"
)

// Inbox holds other sites' transactions until apply has applied them: one
// stream per site, subject casualdb.in.<site>.<origin>, read by one durable
// consumer per origin (apply_<origin>).
//
// Why one consumer per origin: apply must hold an origin's next
// transaction back while what it causally depends on (from another origin)
// is missing. Through a single consumer over all origins it could only hand
// such a message back (NAK) and take it again, re-reading the whole pending
// window on every switch between origins, and the messages handed back
// filled the window until a dependency beyond it starved. With a consumer
// per origin, a blocked origin simply stays where it is while the others
// flow (see package apply).
//
// Why limits retention and Trim rather than a work queue: a work queue
// removes each message as it is acknowledged, and when that empties the
// stream (apply keeping up, the usual case) the file store replaces its
// block file: a file created and one deleted per inbox message, about a
// tenth of a peer's CPU at 1,000 transactions a second. Here an
// acknowledgement only moves the consumer's floor, and Trim removes what
// lies below the floors now and then. A message stays until it is
// acknowledged, as before; one acknowledged and not yet trimmed is
// delivered again only to a new consumer, which apply recognises as a
// duplicate.
type Inbox struct {
	site   casualdb.SiteID
	stream jetstream.Stream
	// workQueue: the inbox of an earlier version, which held messages when
	// this one started (see OpenInbox); acknowledgements remove them.
	workQueue bool

	mu      sync.Mutex
	trimmed map[casualdb.SiteID]uint64 // per origin: stream sequence trimmed below

	// verify, when set, refuses relays their origin did not sign.
	verify *RelayVerifier
	// proofs: every transaction gets its proof (KeepProofs); log tells of
	// messages whose signature header did not fit, unproven counts their
	// transactions.
	proofs   bool
	log      *slog.Logger
	unproven atomic.Uint64
	// unprovenLog limits those warnings: a peer that keeps sending misfit
	// signatures is counted in full, and logged once a minute per origin.
	unprovenLog logLimit
	// certs interns the origins' certificates that come with messages.
	certs certInterner
	// misnamed: origin names on inbox subjects that are no site names, as
	// Origins last found them (a peer may publish relays under any token).
	misnamed    atomic.Uint64
	misnamedLog logLimit
}

// KeepProofs makes the inbox give each transaction its origin's proof
// (casualdb.InboxTx.Proof): a site that keeps hints needs them to relay
// what it keeps. It costs a hash per transaction. Call it before Consume.
// A message whose signature header does not fit its transactions is
// logged on log (nil: slog.Default()) and its transactions counted
// (Unproven): they are applied, but cannot be relayed.
func (i *Inbox) KeepProofs(log *slog.Logger) {
	if log != nil {
		i.log = log
	}
	i.proofs = true
}

// Unproven counts the transactions, since start, that arrived from their
// origin with a signature header that did not fit them (KeepProofs): kept
// as hints, they cannot be relayed.
func (i *Inbox) Unproven() uint64 { return i.unproven.Load() }

// VerifyRelays makes the inbox hand apply a relayed transaction only when
// its origin signed it (v.Verify); any other is garbled, and apply parks
// it. Call it before Consume. With nil, relays are taken as they come
// (no TLS: no identities to check).
func (i *Inbox) VerifyRelays(v *RelayVerifier) { i.verify = v }

// decode is DecodeInboxMsg, with the origins' proofs (KeepProofs) and
// relays verified (VerifyRelays).
func (i *Inbox) decode(m jetstream.Msg) *casualdb.InboxMsg {
	out := DecodeInboxMsg(m)
	if out.Err != nil || !i.proofs && i.verify == nil {
		return out
	}
	h := m.Headers()
	if out.Relayer == "" {
		if i.proofs {
			if err := withProofs(h, out, i.certs.intern(h.Get(HeaderCert))); err != nil {
				i.unproven.Add(uint64(len(out.Txs)))
				if quiet, ok := i.unprovenLog.allow(string(out.Origin), time.Now()); ok {
					i.log.Warn("transactions arrived with a signature that does not fit them: applied, but a relay of them will be refused",
						"origin", out.Origin, "transactions", len(out.Txs), "err", err, "messages_of_origin_not_logged_since_last", quiet)
				}
			}
		}
		return out
	}
	// A relay: the relayer kept the origin's proof with the transaction.
	err := relayProof(h, out, i.certs.intern(h.Get(HeaderCert)))
	t := &out.Txs[0]
	if i.verify == nil || t.Err != nil {
		// Without verification (no TLS) a proof that does not decode is
		// not passed on: nothing here could check it anyway.
		return out
	}
	if err == nil {
		err = i.verify.Verify(out.Origin, out.Epoch, t.Seq, t.Data, t.Proof, out.Cert)
	}
	if err != nil {
		t.Err = fmt.Errorf("%w: transaction %d of %s relayed by %s is not shown to come from %s: %v", casualdb.ErrGarbled, t.Seq, out.Origin, out.Relayer, out.Origin, err)
		t.Tx = nil
	}
	return out
}

// legacyConsumer is the single consumer over all origins that sites of
// earlier versions kept; a work queue forbids it beside filtered ones.
const legacyConsumer = "apply"

// InboxConsumer names apply's consumer of origin's transactions.
func InboxConsumer(origin casualdb.SiteID) string { return "apply_" + string(origin) }

// OpenInbox creates (or opens) the site's inbox. The work-queue inbox of an
// earlier version is replaced when it is empty, and kept (with its
// retention) until a later start otherwise.
func OpenInbox(ctx context.Context, js jetstream.JetStream, site casualdb.SiteID) (*Inbox, error) {
	cfg := jetstream.StreamConfig{
		Name:       InboxStream(site),
		Subjects:   []string{inboxSubjects(site)},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Retention:  jetstream.LimitsPolicy,
		Duplicates: 2 * time.Minute,
	}
	wq, err := replaceWorkQueue(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("open inbox %s: %w", cfg.Name, err)
	}
	if wq {
		cfg.Retention = jetstream.WorkQueuePolicy
	}
	st, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open inbox %s: %w", cfg.Name, err)
	}
	if err := st.DeleteConsumer(ctx, legacyConsumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("open inbox %s: remove the consumer of earlier versions: %w", cfg.Name, err)
	}
	return &Inbox{site: site, stream: st, workQueue: wq, trimmed: map[casualdb.SiteID]uint64{}, log: slog.Default()}, nil
}

func inboxSubjects(site casualdb.SiteID) string { return "casualdb.in." + string(site) + ".>" }

// originSubjects are the subjects of origin's transactions in site's inbox:
// its own, and the relays of its transactions by the sites that kept them
// as hints (RelaySubject).
func originSubjects(site, origin casualdb.SiteID) []string {
	return []string{InboxSubject(site, origin), InboxSubject(site, origin) + ".*"}
}

// subjectSites returns the origin an inbox subject
// (casualdb.in.<site>.<origin>[.<relayer>]) names, and the site that relays
// its transactions on it ("" when the origin publishes them itself); both
// "" when it is no inbox subject.
func subjectSites(subj string) (origin, relayer casualdb.SiteID) {
	rest, ok := strings.CutPrefix(subj, "casualdb.in.")
	if !ok {
		return "", ""
	}
	_, rest, _ = strings.Cut(rest, ".") // the site
	o, rest, _ := strings.Cut(rest, ".")
	r, _, _ := strings.Cut(rest, ".")
	return casualdb.SiteID(o), casualdb.SiteID(r)
}

// SubjectOrigin returns the origin an inbox subject names; "" when it is
// none.
func SubjectOrigin(subj string) casualdb.SiteID {
	o, _ := subjectSites(subj)
	return o
}

// replaceWorkQueue deletes the work-queue inbox of an earlier version if it
// holds no message (a stream's retention cannot change to or from a work
// queue), and reports whether one is left. So that no message arrives
// between the look and the delete (a peer's publish acknowledged there
// would be lost), the stream first stops listening on the inbox subjects:
// a peer's publish meanwhile finds no stream, is not acknowledged, and is
// sent again.
func replaceWorkQueue(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (bool, error) {
	st, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return false, err
	}
	if info.Config.Retention != jetstream.WorkQueuePolicy {
		return false, nil
	}
	if info.State.Msgs > 0 {
		return true, nil
	}
	orig, quiet := info.Config, info.Config
	retiring := "casualdb.retiring." + want.Name
	quiet.Subjects = []string{retiring}
	if _, err := js.UpdateStream(ctx, quiet); err != nil {
		return false, fmt.Errorf("retire the work-queue inbox: %w", err)
	}
	// A peer's publish may sit in the stream's queue, taken before the
	// subjects moved: a barrier stored after it tells when it is stored.
	ack, err := js.Publish(ctx, retiring, nil)
	if err != nil {
		return false, fmt.Errorf("retire the work-queue inbox: %w", err)
	}
	if info, err = st.Info(ctx); err != nil {
		return false, err
	}
	if info.State.Msgs != 1 || info.State.LastSeq != ack.Sequence {
		// A message came before the subjects moved: listen again, and
		// keep the work queue, without the barrier (nothing reads it, and
		// it would count as waiting for ever).
		if err := st.DeleteMsg(ctx, ack.Sequence); err != nil {
			return false, fmt.Errorf("restore the work-queue inbox: remove the barrier: %w", err)
		}
		if _, err := js.UpdateStream(ctx, orig); err != nil {
			return false, fmt.Errorf("restore the work-queue inbox: %w", err)
		}
		return true, nil
	}
	if err := js.DeleteStream(ctx, want.Name); err != nil {
		return false, fmt.Errorf("delete the empty work-queue inbox: %w", err)
	}
	return false, nil
}

// Origins returns, sorted, the origins that have transactions waiting in
// the inbox.
func (i *Inbox) Origins(ctx context.Context) ([]casualdb.SiteID, error) {
	prefix := "casualdb.in." + string(i.site) + "."
	info, err := i.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("inbox origins: %w", err)
	}
	seen := map[casualdb.SiteID]bool{}
	out := make([]casualdb.SiteID, 0, len(info.State.Subjects))
	var bad []casualdb.SiteID
	for subj := range info.State.Subjects {
		o := SubjectOrigin(subj)
		if o == "" || seen[o] {
			continue
		}
		seen[o] = true
		if !o.Valid() {
			// No consumer can be made for it, nor a row of progress
			// written: its messages stay in the inbox, unread.
			bad = append(bad, o)
			continue
		}
		out = append(out, o)
	}
	i.misnamed.Store(uint64(len(bad)))
	if len(bad) > 0 {
		if held, ok := i.misnamedLog.allow("misnamed", time.Now()); ok {
			i.log.Warn("inbox messages under origin names that are no site names: left unread in the inbox (a peer relayed them)",
				"names", len(bad), "first", fmt.Sprintf("%.64q", string(bad[0])), "warnings_held_back", held)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Misnamed counts the origin names, as Origins last found them, under which
// messages wait in the inbox that are no site names: never read.
func (i *Inbox) Misnamed() uint64 { return i.misnamed.Load() }

// Reset starts apply's consumer of origin afresh and returns it. Messages
// the previous reader had taken but not acknowledged (it stopped, crashed,
// or its run failed and is restarting in the same process) would wait for
// the acknowledgement timeout before coming again, and with them everything
// after them from the same origin. A work queue keeps every message until
// it is acknowledged, and apply is its only reader, so a new consumer gets
// them at once. Apply recognises what it had applied already. Call it
// before every run of apply, never while one runs.
func (i *Inbox) Reset(ctx context.Context, origin casualdb.SiteID) (jetstream.Consumer, error) {
	name := InboxConsumer(origin)
	// What the old consumer acknowledged goes first: the new one would
	// deliver it again.
	if old, err := i.stream.Consumer(ctx, name); err == nil {
		if info, err := old.Info(ctx); err == nil {
			if err := i.trim(ctx, origin, info.AckFloor.Stream); err != nil {
				return nil, err
			}
		}
	}
	if err := i.stream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("reset inbox consumer %s: %w", name, err)
	}
	cons, err := i.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        name,
		FilterSubjects: originSubjects(i.site, origin),
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        time.Minute,
		MaxAckPending:  4096,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("open inbox consumer %s: %w", name, err)
	}
	return cons, nil
}

// Consume starts apply's consumer of origin afresh (see Reset) and calls
// deliver with every message it delivers, decoded (DecodeInboxMsg), on the
// consumer's goroutine, one message at a time; pull is how many messages it
// asks the server for at once. deliver may block, which stops the flow of
// that origin only; it must return once its owner stops reading (its
// context is done), or stop waits for it in vain. ctx bounds the setting up
// only. stop stops the consumer and waits, at most 5 seconds, until deliver
// has returned for the last time.
func (i *Inbox) Consume(ctx context.Context, origin casualdb.SiteID, pull int, deliver func(*casualdb.InboxMsg)) (stop func(), err error) {
	cons, err := i.Reset(ctx, origin)
	if err != nil {
		return nil, err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) { deliver(i.decode(m)) }, jetstream.PullMaxMessages(pull))
	if err != nil {
		return nil, fmt.Errorf("consume inbox of origin %s: %w", origin, err)
	}
	return func() {
		cc.Stop()
		select {
		case <-cc.Closed():
		case <-time.After(5 * time.Second):
		}
	}, nil
}

// Trim removes from the inbox what apply acknowledged (below each origin
// consumer's acknowledgement floor), and returns how many messages wait
// still: those of an origin not yet delivered or not acknowledged by its
// consumer, and all of an origin that has none.
func (i *Inbox) Trim(ctx context.Context) (pending uint64, err error) {
	prefix := "casualdb.in." + string(i.site) + "."
	info, err := i.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return 0, fmt.Errorf("inbox info: %w", err)
	}
	if i.workQueue {
		return info.State.Msgs, nil
	}
	consumers := map[casualdb.SiteID]*jetstream.ConsumerInfo{}
	list := i.stream.ListConsumers(ctx)
	for ci := range list.Info() {
		if o, ok := strings.CutPrefix(ci.Name, "apply_"); ok {
			consumers[casualdb.SiteID(o)] = ci
		}
	}
	if err := list.Err(); err != nil {
		return 0, fmt.Errorf("inbox consumers: %w", err)
	}
	counted := map[casualdb.SiteID]bool{}
	for subj, n := range info.State.Subjects {
		origin := SubjectOrigin(subj)
		ci := consumers[origin]
		if ci == nil {
			pending += n
			continue
		}
		if counted[origin] {
			continue
		}
		counted[origin] = true
		pending += ci.NumPending + uint64(ci.NumAckPending)
		if err := i.trim(ctx, origin, ci.AckFloor.Stream); err != nil {
			return pending, err
		}
	}
	return pending, nil
}

// trim removes origin's messages up to and including stream sequence
// floor, every one of them acknowledged.
func (i *Inbox) trim(ctx context.Context, origin casualdb.SiteID, floor uint64) error {
	if i.workQueue {
		return nil
	}
	i.mu.Lock()
	done := i.trimmed[origin] > floor
	i.mu.Unlock()
	if floor == 0 || done {
		return nil
	}
	for _, subj := range originSubjects(i.site, origin) {
		err := i.stream.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(floor+1))
		if err != nil {
			return fmt.Errorf("trim inbox of origin %s: %w", origin, err)
		}
	}
	i.mu.Lock()
	i.trimmed[origin] = max(i.trimmed[origin], floor+1)
	i.mu.Unlock()
	return nil
}

// logLimit lets a repeated warning through at most once every logEvery per
// key (an origin: one peer's misfits do not hide another's); allow reports
// how many of that key's were held back since the last one let through.
// Safe for concurrent use.
type logLimit struct {
	mu   sync.Mutex
	keys map[string]*logKey
}

type logKey struct {
	last time.Time
	held uint64
}

// logEvery is how often a repeated warning is logged at most (logLimit);
// maxLogKeys bounds the keys remembered (past it, they start afresh).
const (
	logEvery   = time.Minute
	maxLogKeys = 256
)

func (l *logLimit) allow(key string, now time.Time) (held uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.keys[key]
	if k == nil {
		if l.keys == nil || len(l.keys) >= maxLogKeys {
			l.keys = map[string]*logKey{}
		}
		k = &logKey{}
		l.keys[key] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < logEvery {
		k.held++
		return 0, false
	}
	held, k.held, k.last = k.held, 0, now
	return held, true
}
