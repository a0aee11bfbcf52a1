package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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

// TestStatus_TokenAndTLS: casualdb status reaches an HTTPS admin endpoint,
// verifies it against --ca, and sends the bearer token of --token-file (or
// CASUALDB_ADMIN_TOKEN); without the CA it refuses the certificate.
func TestStatus_TokenAndTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"site":"a","healthy":true}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(env map[string]string, args ...string) (string, error) {
		var out, errOut strings.Builder
		m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }}
		err := m.Run(context.Background(), append([]string{"status", "--admin", srv.URL, "--json"}, args...))
		return out.String(), err
	}
	if out, err := run(nil, "--ca", ca, "--token-file", tokenFile); err != nil || !strings.Contains(out, `"site":"a"`) {
		t.Errorf("with CA and token file: %q, %v", out, err)
	}
	if out, err := run(map[string]string{"CASUALDB_ADMIN_TOKEN": "tok"}, "--ca", ca); err != nil || !strings.Contains(out, `"site":"a"`) {
		t.Errorf("with CA and CASUALDB_ADMIN_TOKEN: %q, %v", out, err)
	}
	if _, err := run(nil, "--ca", ca); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("without a token: %v, want 401", err)
	}
	if _, err := run(nil, "--token-file", tokenFile); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: %v, want a certificate error", err)
	}
}
