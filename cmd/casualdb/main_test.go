package main

import (
	"strings"
	"testing"
)

func TestConfigFlags_Load(t *testing.T) {
	key := "AAECAwQFBgcICQoLDA0ODw==" // 16 bytes
	env := map[string]string{"CASUALDB_SITE": "fromenv", "CASUALDB_DSN": "postgres://env@h/db", "CASUALDB_PEERS": "x=nats://127.0.0.1:4299",
		"CASUALDB_CLUSTER_SECRET_KEY": key, "CASUALDB_ADMIN_TOKEN": "tok"}
	f := configFlags{path: "../../node/testdata/minimal.yml", site: "fromflag"}
	cfg, err := f.load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Site, "fromflag"; got != want {
		t.Errorf("site: got %q, want %q (flag beats env beats file)", got, want)
	}
	if got, want := cfg.Database.DSN, "postgres://env@h/db"; got != want {
		t.Errorf("dsn: got %q, want %q", got, want)
	}
	if len(cfg.Peers) != 1 || cfg.Peers[0].Name != "x" {
		t.Errorf("peers from env: got %+v", cfg.Peers)
	}
	// Secrets from the environment, never in the YAML.
	if got := cfg.Cluster.Key(); len(got) != 16 || got[15] != 15 {
		t.Errorf("gossip key from CASUALDB_CLUSTER_SECRET_KEY: %x", got)
	}
	if tok, err := cfg.Admin.BearerToken(); err != nil || tok != "tok" {
		t.Errorf("admin token from CASUALDB_ADMIN_TOKEN: %q, %v", tok, err)
	}
	// A variable that does not parse is an error naming it, not ignored.
	for _, garbled := range []string{"x", ","} {
		env["CASUALDB_PEERS"] = garbled
		if _, err := f.load(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "CASUALDB_PEERS") {
			t.Errorf("CASUALDB_PEERS=%q: %v, want an error naming it", garbled, err)
		}
	}
}

func TestMain_Run(t *testing.T) {
	var out, errOut strings.Builder
	m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }}
	if err := m.Run(t.Context(), []string{"bogus"}); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("Run(bogus) = %v, want unknown command", err)
	}
	if err := m.Run(t.Context(), []string{"version"}); err != nil || !strings.Contains(out.String(), "casualdb") {
		t.Errorf("Run(version) = %v, output %q", err, out.String())
	}
}

func TestMain_Certs(t *testing.T) {
	dir := t.TempDir()
	var out, errOut strings.Builder
	m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }}
	if err := m.Run(t.Context(), []string{"certs", "--dir", dir, "--site", "a", "--site", "b", "--host", "b=10.0.0.2"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "site b: nats.tls: {cert: "+dir+"/b.pem") {
		t.Errorf("output %q names no files for b", out.String())
	}
	if err := m.Run(t.Context(), []string{"certs", "--dir", dir, "--site", "a", "--host", "c=x"}); err == nil || !strings.Contains(err.Error(), "--host for c") {
		t.Errorf("--host for an unnamed site: %v", err)
	}
	if err := m.Run(t.Context(), []string{"certs", "--dir", dir, "--site", "../x"}); err == nil || !strings.Contains(err.Error(), "not a site name") {
		t.Errorf("--site ../x: %v", err)
	}
	if err := m.Run(t.Context(), []string{"certs", "--dir", dir}); err == nil || !strings.Contains(err.Error(), "--site") {
		t.Errorf("no --site: %v", err)
	}
}
