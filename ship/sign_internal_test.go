package ship

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"testing"
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
