package ship

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go/jetstream"
)

// Inbox holds other sites' transactions until apply has applied them: one
// work-queue stream per site, subject casualdb.in.<site>.<origin>, read by
// one durable consumer per origin (apply_<origin>).
//
// Why one consumer per origin: apply must hold an origin's next
// transaction back while what it causally depends on (from another origin)
// is missing. Through a single consumer over all origins it could only hand
// such a message back (NAK) and take it again, re-reading the whole pending
// window on every switch between origins, and the messages handed back
// filled the window until a dependency beyond it starved. With a consumer
// per origin, a blocked origin simply stays where it is while the others
// flow (see package apply).
type Inbox struct {
	site   casualdb.SiteID
	stream jetstream.Stream
}

// legacyConsumer is the single consumer over all origins that sites of
// earlier versions kept; a work queue forbids it beside filtered ones.
const legacyConsumer = "apply"

// InboxConsumer names apply's consumer of origin's transactions.
func InboxConsumer(origin casualdb.SiteID) string { return "apply_" + string(origin) }

// OpenInbox creates (or opens) the site's inbox.
func OpenInbox(ctx context.Context, js jetstream.JetStream, site casualdb.SiteID) (*Inbox, error) {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       InboxStream(site),
		Subjects:   []string{"casualdb.in." + string(site) + ".>"},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Retention:  jetstream.WorkQueuePolicy,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("open inbox %s: %w", InboxStream(site), err)
	}
	if err := st.DeleteConsumer(ctx, legacyConsumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("open inbox %s: remove the consumer of earlier versions: %w", InboxStream(site), err)
	}
	return &Inbox{site: site, stream: st}, nil
}

// Origins returns, sorted, the origins that have transactions waiting in
// the inbox.
func (i *Inbox) Origins(ctx context.Context) ([]casualdb.SiteID, error) {
	prefix := "casualdb.in." + string(i.site) + "."
	info, err := i.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("inbox origins: %w", err)
	}
	out := make([]casualdb.SiteID, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		if o := strings.TrimPrefix(subj, prefix); o != subj && o != "" && !strings.Contains(o, ".") {
			out = append(out, casualdb.SiteID(o))
		}
	}
	slices.Sort(out)
	return out, nil
}

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
	if err := i.stream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("reset inbox consumer %s: %w", name, err)
	}
	cons, err := i.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: InboxSubject(i.site, origin),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 4096,
		DeliverPolicy: jetstream.DeliverAllPolicy,
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
	cc, err := cons.Consume(func(m jetstream.Msg) { deliver(DecodeInboxMsg(m)) }, jetstream.PullMaxMessages(pull))
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

// Pending returns how many messages wait in the inbox.
func (i *Inbox) Pending(ctx context.Context) (uint64, error) {
	info, err := i.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("inbox info: %w", err)
	}
	return info.State.Msgs, nil
}
