package node

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
)

func TestLoadConfig(t *testing.T) {
	t.Run("good", func(t *testing.T) {
		cfg, err := LoadConfig("testdata/good.yml")
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Validate() = %v, want nil", err)
		}
		if got, want := len(cfg.Peers), 2; got != want {
			t.Errorf("peers: got %d, want %d", got, want)
		}
		if got, want := cfg.Apply.WaitTimeout, 10*time.Second; got != want {
			t.Errorf("apply.wait_timeout: got %s, want %s", got, want)
		}
		if got, want := len(cfg.Cluster.Key()), 32; got != want {
			t.Errorf("cluster.secret_key: %d bytes, want %d", got, want)
		}
		if got, want := cfg.Cluster.PushPull, 2*time.Second; got != want {
			t.Errorf("cluster.push_pull: got %s, want %s", got, want)
		}
		if got, want := cfg.Cluster.HintRetention, 6*time.Hour; got != want {
			t.Errorf("cluster.hint_retention: got %s, want %s", got, want)
		}
		if got, want := cfg.SlotName(), "casualdb_eu1"; got != want {
			t.Errorf("slot: got %s, want %s", got, want)
		}
		def, per := cfg.Conflicts.DeletePolicies()
		if def != conflict.DeleteWins || len(per) != 1 || per["public.orders"] != conflict.LastWriterWins {
			t.Errorf("delete policies: got %v %v, want delete_wins and public.orders lww", def, per)
		}
	})
	t.Run("minimal gets defaults", func(t *testing.T) {
		cfg, err := LoadConfig("testdata/minimal.yml")
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Validate() = %v, want nil", err)
		}
		def := DefaultConfig()
		if cfg.NATS.Listen != def.NATS.Listen || cfg.Admin.Listen != def.Admin.Listen || cfg.DataDir != def.DataDir || cfg.Apply.MaxBatch != def.Apply.MaxBatch {
			t.Errorf("defaults not applied: %+v", cfg)
		}
		if got, want := cfg.Cluster.HintRetention, 24*time.Hour; got != want {
			t.Errorf("cluster.hint_retention default: got %s, want %s", got, want)
		}
	})
}

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		file, want string
	}{
		{"bad-no-site.yml", "site: required"},
		{"bad-site-name.yml", "site: \"Bad Name\""},
		{"bad-no-dsn.yml", "database.dsn: required"},
		{"bad-unknown-key.yml", "field dns not found"},
		{"bad-peer-self.yml", "peers[0].name: \"a\" appears twice"},
		{"bad-peer-url.yml", "peers[0].nats_url"},
		{"bad-nats-listen.yml", "nats.listen"},
		{"bad-log-level.yml", "log.level"},
		{"bad-max-batch.yml", "apply.max_batch"},
		{"bad-nats-plain.yml", "nats.tls: required off loopback (nats.listen 0.0.0.0:4222): set nats.tls.cert, nats.tls.key and nats.tls.ca"},
		{"bad-nats-tls-partial.yml", "nats.tls: cert, key and ca go together"},
		{"bad-antientropy-interval.yml", "antientropy.interval: must not be negative"},
		{"bad-antientropy-buckets.yml", "antientropy.buckets: must be between 1 and 1048576"},
		{"bad-capture-batch.yml", "capture.max_batch: must be positive"},
		{"bad-ship-batch.yml", "ship.max_batch: must be positive"},
		{"bad-dsn-scheme.yml", "database.dsn: not a postgres:// URL"},
		{"bad-table-name.yml", "database.tables"},
		{"bad-yaml.yml", "invalid configuration"},
		{"bad-delete-policy.yml", `conflicts.delete_policy: "update_wins": want delete_wins or lww`},
		{"bad-table-delete-policy.yml", "conflicts.tables.accounts.delete_policy"},
		{"bad-merge.yml", `conflicts.tables.t.merge: "cells": want row or columns`},
		{"bad-cluster-no-key.yml", "cluster.secret_key: required to gossip on 10.0.0.1:7946, off loopback"},
		{"bad-cluster-key.yml", "cluster.secret_key: want base64 of 16, 24 or 32 bytes"},
		{"bad-cluster-wildcard.yml", `cluster.bind: "0.0.0.0": peers need a specific IP address`},
		{"bad-cluster-join.yml", "cluster.bind: required when cluster.join"},
		{"bad-hint-retention.yml", "cluster.hint_retention: 0s: must be positive"},
		{"bad-hint-retention-negative.yml", "cluster.hint_retention: -1h0m0s: must be positive"},
		{"bad-cluster-key-file.yml", "cluster.secret_key_file: want base64 of 16, 24 or 32 bytes"},
		{"bad-cluster-key-file-missing.yml", "cluster.secret_key_file: open testdata/no-such-key.txt: no such file"},
		{"bad-nats-creds-embedded.yml", "nats.creds: only for an external nats.url"},
		{"bad-nats-seed-missing.yml", "nats.nkey_seed_file: stat testdata/no-such-seed: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := LoadConfig("testdata/" + tt.file)
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil {
				t.Fatalf("got nil error, want one containing %q", tt.want)
			}
			if !errors.Is(err, casualdb.ErrConfig) {
				t.Errorf("error %v does not wrap ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestConfig_NATSInsecure: plain-text NATS off loopback is refused unless
// nats.insecure says so; on loopback it needs nothing.
func TestConfig_NATSInsecure(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Site, cfg.Database.DSN = "a", "postgres://x@y/z"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("loopback, plain text: %v", err)
	}
	cfg.Peers = []PeerConfig{{Name: "b", NATSURL: "nats://10.0.0.2:4222"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "peer b at nats://10.0.0.2:4222") {
		t.Fatalf("a peer off loopback, plain text: %v", err)
	}
	cfg.NATS.Insecure = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("nats.insecure: %v", err)
	}
}

// TestConfig_SecretKeyFile: the gossip key may come from a file (kept out of
// the YAML); Key reads it.
func TestConfig_SecretKeyFile(t *testing.T) {
	cfg, err := LoadConfig("testdata/good-cluster-key-file.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("testdata/good-key.txt")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if got := cfg.Cluster.Key(); len(got) != 32 || !bytes.Equal(got, want) {
		t.Errorf("Key() = %x, want the file's %x", got, want)
	}
}
