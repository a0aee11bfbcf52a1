package main

import (
	"strings"
	"testing"
)

// TestMain_Demo: the demo converges, its sites speaking mutual TLS (tls://
// peers: without TLS they would not converge).
func TestMain_Demo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three PostgreSQL servers")
	}
	var out, errOut strings.Builder
	m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }}
	if err := m.Run(t.Context(), []string{"demo"}); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	for _, want := range []string{"converged in", "Converged: all three sites hold the same rows", "set-by-", "speak mutual TLS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
