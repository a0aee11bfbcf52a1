package meta

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/casualdb/casualdb"
)

// The payload of a parked entry is one of three things: a ParkedChange
// (apply could not apply a change), a RemovedRow (apply removed a local row
// to settle a unique collision), or the raw bytes of a transport message
// that did not decode. Apply writes the first two with these types; the
// `casualdb parked` command reads them back with Decode.

// ParkedChange is the payload apply parks for a change: the change with its
// relation as the origin described it, so that it can be replayed without
// its transaction.
type ParkedChange struct {
	Relation   casualdb.Relation `json:"relation"`
	Change     casualdb.Change   `json:"change"`
	CommitTime time.Time         `json:"commit_time"` // the origin's commit time of the change's transaction
}

// RemovedRow is the payload apply parks for a local row it removed to
// settle a unique collision: row_to_json of the row, and its version.
type RemovedRow struct {
	Row     json.RawMessage  `json:"row"`
	Version casualdb.Version `json:"version"`
}

// ParkedKind tells what a parked entry holds; the values are those
// `casualdb parked --json` prints.
type ParkedKind string

// The kinds of parked entries.
const (
	ParkedInsert     ParkedKind = "insert"
	ParkedUpdate     ParkedKind = "update"
	ParkedDelete     ParkedKind = "delete"
	ParkedTruncate   ParkedKind = "truncate"
	ParkedRemovedRow ParkedKind = "removed_row" // a row removed by a unique collision
	ParkedMessage    ParkedKind = "message"     // a transport message that did not decode
)

// ParkedPayload is a decoded payload: Change for the change kinds, Removed
// for ParkedRemovedRow, neither for a message.
type ParkedPayload struct {
	Kind    ParkedKind
	Change  *ParkedChange
	Removed *RemovedRow
}

// Decode tells what p's payload holds. Anything that is not clearly a
// change or a removed row, including every entry without a table, is a
// message.
func (p Parked) Decode() ParkedPayload {
	msg := ParkedPayload{Kind: ParkedMessage}
	if p.Table == "" || !json.Valid(p.Payload) {
		return msg
	}
	var probe struct {
		Relation *casualdb.Relation `json:"relation"`
		Change   *casualdb.Change   `json:"change"`
		Commit   time.Time          `json:"commit_time"`
		Row      json.RawMessage    `json:"row"`
		Version  casualdb.Version   `json:"version"`
	}
	if err := json.Unmarshal(p.Payload, &probe); err != nil {
		return msg
	}
	switch {
	case probe.Change != nil && probe.Relation != nil:
		kind, ok := map[casualdb.Op]ParkedKind{casualdb.OpInsert: ParkedInsert, casualdb.OpUpdate: ParkedUpdate,
			casualdb.OpDelete: ParkedDelete, casualdb.OpTruncate: ParkedTruncate}[probe.Change.Op]
		if !ok {
			return msg
		}
		return ParkedPayload{Kind: kind, Change: &ParkedChange{Relation: *probe.Relation, Change: *probe.Change, CommitTime: probe.Commit}}
	case probe.Change == nil && bytes.HasPrefix(bytes.TrimSpace(probe.Row), []byte("{")):
		return ParkedPayload{Kind: ParkedRemovedRow, Removed: &RemovedRow{Row: probe.Row, Version: probe.Version}}
	}
	return msg
}
