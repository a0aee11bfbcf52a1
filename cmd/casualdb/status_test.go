package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/casualdb/casualdb/hint"
	"github.com/casualdb/casualdb/node"
)

func TestPrintStatus_Hints(t *testing.T) {
	m := hint.MissingStatus{Origin: "a", Holder: "b", Epoch: "e1", UpToSeq: 7, AppliedSeq: 2, Missing: 5, HintsExpired: 5}
	st := node.Status{Site: "c", Healthy: true, Missing: []hint.MissingStatus{m}, Warnings: []string{m.Warning()},
		HintExpiries: []hint.ExpiryStatus{{For: "d", Origin: "a", Epoch: "e1", Hints: 3, FirstSeq: 4, LastSeq: 6}},
		Peers:        map[string]node.PeerStatus{"d": {State: "dead", HintsHeld: 11, HintsHanded: 4}},
		Origins:      map[string]node.OriginStatus{"d": {Applied: 9, Held: 2}}}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, want := range []string{
		"WARNING: missing 5 transactions from origin a up to seq 7 (hints expired at holder b); they come only from a's outbox or a repair",
		"missing transactions (hints for this site expired",
		"hints expired here (cluster.hint_retention):",
		"open: the site has not applied past them",
		"WAITING HERE  HINTS HELD  HANDED OFF",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("casualdb status output lacks %q:\n%s", want, out.String())
		}
	}
	// The peer's row: 9 applied from it, 2 of its transactions waiting
	// here, 11 hints held for it, 4 handed off.
	if !regexp.MustCompile(`(?m)^d\s+dead\s+down\s+0\s+\?\s+\?\s+9\s+0\.000\s+2\s+11\s+4\s*$`).MatchString(out.String()) {
		t.Errorf("casualdb status lacks d's row with its hints:\n%s", out.String())
	}
}
