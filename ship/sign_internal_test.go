package ship

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
	"github.com/nats-io/nats.go"
)

// TestMerkle: every leaf's inclusion path leads to the tree's root, and only
// from that leaf at that index. (A path may fit trees of other sizes: the
// signed statement names the size, runDigest.)
func TestMerkle(t *testing.T) {
	for n := 1; n <= 40; n++ {
		leaves := make([][]byte, n)
		for i := range leaves {
			leaves[i] = []byte(fmt.Sprintf("tx %d", i))
		}
		tree := newMerkle(leaves)
		root := tree.root()
		for i := range leaves {
			path := tree.path(i)
			if r, ok := rootFromPath(leafHash(leaves[i]), uint64(i), uint64(n), path); !ok || r != root {
				t.Fatalf("n=%d leaf %d: path of %d hashes does not lead to the root", n, i, len(path))
			}
			if r, ok := rootFromPath(leafHash([]byte("forged")), uint64(i), uint64(n), path); ok && r == root {
				t.Fatalf("n=%d leaf %d: another leaf's data fits the path", n, i)
			}
			if n > 1 {
				j := (i + 1) % n
				if r, ok := rootFromPath(leafHash(leaves[i]), uint64(j), uint64(n), path); ok && r == root {
					t.Fatalf("n=%d leaf %d fits at index %d too", n, i, j)
				}
			}
			if _, ok := rootFromPath(leafHash(leaves[i]), uint64(n), uint64(n), path); ok {
				t.Fatalf("n=%d: index %d accepted", n, n)
			}
		}
	}
	if r, ok := rootFromPath(leafHash([]byte("x")), 0, 1, nil); !ok || r != leafHash([]byte("x")) {
		t.Errorf("a tree of one: its root is its leaf")
	}
}

func TestDecodeProof(t *testing.T) {
	p := encodeProof(3, 7, [][32]byte{{1}, {2}, {3}}, []byte("sig"))
	i, n, path, sig, err := decodeProof(p)
	if err != nil || i != 3 || n != 7 || len(path) != 3 || path[1][0] != 2 || string(sig) != "sig" {
		t.Fatalf("decodeProof = %d %d %v %q %v", i, n, path, sig, err)
	}
	for _, bad := range [][]byte{nil, {1}, {1, 2}, {1, 2, 3}, {5, 2, 0}, encodeProof(0, 1, nil, nil)[:2], {0, 1, 65}} {
		if _, _, _, _, err := decodeProof(bad); err == nil {
			t.Errorf("decodeProof(%v) accepted", bad)
		}
	}
}

// BenchmarkSignRun: what signing costs capture per outbox message (go test
// -bench SignRun ./ship).
func BenchmarkSignRun(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	s := &Signer{site: "a", key: key}
	for _, n := range []int{1, 16, 256} {
		txs := make([][]byte, n)
		for i := range txs {
			txs[i] = make([]byte, 162)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := s.SignRun("e", 1, txs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestAttachProofs: an inbox message joining two signed runs (the shipper
// joins outbox messages) gives every transaction a proof that verifies; a
// signature header naming transactions the message does not hold is
// garbled.
func TestAttachProofs(t *testing.T) {
	cfg := siteA(t)
	signer, err := NewSigner(cfg, "a")
	if err != nil {
		t.Fatal(err)
	}
	m := &casualdb.InboxMsg{Origin: "a", Epoch: "e"}
	var data [][]byte
	for seq := uint64(1); seq <= 5; seq++ {
		d := []byte(fmt.Sprintf("tx %d", seq))
		data = append(data, d)
		m.Txs = append(m.Txs, casualdb.InboxTx{Seq: seq, Data: d})
	}
	h := nats.Header{}
	for _, run := range [][2]int{{0, 3}, {3, 5}} {
		v, err := signer.SignRun("e", uint64(run[0]+1), data[run[0]:run[1]])
		if err != nil {
			t.Fatal(err)
		}
		h.Add(HeaderSig, v)
	}
	h.Set(HeaderCert, signer.Cert())
	var certs certInterner
	if err := attachProofs(h, m, certs.intern(h.Get(HeaderCert))); err != nil {
		t.Fatal(err)
	}
	v := NewRelayVerifier(cfg)
	for _, x := range m.Txs {
		if err := v.Verify("a", "e", x.Seq, x.Data, x.Proof, m.Cert); err != nil {
			t.Errorf("transaction %d: %v", x.Seq, err)
		}
	}
	if err := v.Verify("a", "e", 4, m.Txs[3].Data, m.Txs[0].Proof, m.Cert); err == nil {
		t.Errorf("transaction 4 verified with transaction 1's proof")
	}
	// A certificate header past maxCertHeader is taken for none: the
	// signed message is garbled, and nothing of it is kept.
	var huge certInterner
	if der := huge.intern(strings.Repeat("A", maxCertHeader+4)); der != nil || len(huge.m) != 0 {
		t.Errorf("a %d-byte certificate header was interned", maxCertHeader+4)
	}
	for _, bad := range []string{"9 1 AAAA", "2 9223372036854775807 AAAA"} {
		h := nats.Header{HeaderSig: {bad}, HeaderCert: {signer.Cert()}}
		if err := attachProofs(h, &casualdb.InboxMsg{Txs: m.Txs}, m.Cert); !errors.Is(err, casualdb.ErrGarbled) {
			t.Errorf("a run of transactions the message does not hold (%s): %v", bad, err)
		}
	}
}

// TestSignKeys: the key types a site's certificate may have sign and verify,
// and a changed statement does not verify.
func TestSignKeys(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []crypto.Signer{ec, ed, rs} {
		sig, err := sign(key, []byte("statement"))
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		if err := verifySig(key.Public(), []byte("statement"), sig); err != nil {
			t.Errorf("%T: %v", key, err)
		}
		if err := verifySig(key.Public(), []byte("statemenT"), sig); err == nil {
			t.Errorf("%T: another statement verified", key)
		}
	}
}

// TestLogLimit: the first warning of a key goes through, its repeats within
// a minute are held back, and the next one after it says how many were; each
// key (origin) has its own minute.
func TestLogLimit(t *testing.T) {
	var l logLimit
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	if held, ok := l.allow("a", t0); !ok || held != 0 {
		t.Fatalf("first: %d %v", held, ok)
	}
	for i := 1; i <= 3; i++ {
		if _, ok := l.allow("a", t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatalf("repeat %d within a minute let through", i)
		}
	}
	if held, ok := l.allow("b", t0.Add(2*time.Second)); !ok || held != 0 {
		t.Fatalf("another origin's first, within a's minute: held %d, let through %v", held, ok)
	}
	if held, ok := l.allow("a", t0.Add(logEvery)); !ok || held != 3 {
		t.Fatalf("after a minute: held %d, let through %v; want 3, true", held, ok)
	}
	if _, ok := l.allow("a", t0.Add(logEvery+time.Second)); ok {
		t.Fatal("the minute did not start again")
	}
}

// TestNewSigner_ChainTooLong: a certificate chain longer than peers take
// with each message is refused at start, naming the key.
func TestNewSigner_ChainTooLong(t *testing.T) {
	cfg := siteA(t)
	cfg.Certificates[0].Certificate = append(cfg.Certificates[0].Certificate, make([]byte, maxCertHeader))
	if _, err := NewSigner(cfg, "a"); !errors.Is(err, casualdb.ErrConfig) || !strings.Contains(err.Error(), "nats.tls.cert") {
		t.Errorf("NewSigner with a %d-byte chain: %v", maxCertHeader, err)
	}
}

// siteA makes a CA and site a's certificate (`casualdb certs`) and returns
// a's client TLS configuration.
func siteA(t *testing.T) *tls.Config {
	t.Helper()
	dir := t.TempDir()
	if err := certs.Generate(dir, []string{"a"}, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := certs.ClientConfig(certs.For(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
