package certs

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// handshake runs a TLS handshake between a server and a client config.
func handshake(t *testing.T, srv, cli *tls.Config, serverName string) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cli = cli.Clone()
	cli.ServerName = serverName
	done := make(chan error, 1)
	go func() { done <- tls.Server(a, srv).Handshake() }()
	err := tls.Client(b, cli).Handshake()
	if serr := <-done; err == nil {
		err = serr
	}
	return err
}

// TestGenerate: sites of one CA verify each other both ways, by name and on
// loopback; a site of another CA is refused; a second call reuses the CA.
func TestGenerate(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	if err := Generate(dir, []string{"a", "b"}, map[string][]string{"b": {"10.1.2.3", "b.example"}}); err != nil {
		t.Fatal(err)
	}
	if err := Generate(other, []string{"x"}, nil); err != nil {
		t.Fatal(err)
	}
	srv, err := ServerConfig(For(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	cliB, err := ClientConfig(For(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "localhost", "127.0.0.1"} {
		if err := handshake(t, srv, cliB, name); err != nil {
			t.Errorf("b to a as %q: %v", name, err)
		}
	}
	if err := handshake(t, srv, cliB, "c"); err == nil {
		t.Error("b accepted a's certificate for the name c")
	}
	cliX, err := ClientConfig(For(other, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, srv, cliX, "a"); err == nil {
		t.Error("a site of another CA connected")
	}
	// b's hosts are in its certificate; the CA stays the same on a rerun.
	srvB, err := ServerConfig(For(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	cliA, err := ClientConfig(For(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Generate(dir, []string{"c"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"10.1.2.3", "b.example"} {
		if err := handshake(t, srvB, cliA, name); err != nil {
			t.Errorf("a to b as %q: %v", name, err)
		}
	}
	cliC, err := ClientConfig(For(dir, "c"))
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, srv, cliC, "a"); err != nil {
		t.Errorf("c, made by a second run with the same CA, to a: %v", err)
	}
}

// TestGenerate_KeepsTheCA: a directory with the CA's certificate but not its
// key (put away, as advised) is an error, never a new CA that would stop
// every site's certificate from verifying.
func TestGenerate_KeepsTheCA(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(dir, []string{"a"}, nil); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	if err := Generate(dir, []string{"b"}, nil); err == nil {
		t.Fatal("made a certificate without the CA's key")
	}
	after, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil || string(after) != string(before) {
		t.Fatalf("ca.pem changed (%v)", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("a's key: %v, %v; want mode 0600", fi.Mode(), err)
	}
}
