package ship

import (
	"bytes"
	"errors"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go"
)

// FuzzEntries: an inbox message's framing, as a peer may send it: the
// transactions it carries, or an error wrapping ErrGarbled. What decodes
// frames again into entries that decode the same.
func FuzzEntries(f *testing.F) {
	var body []byte
	for i := uint64(1); i <= 3; i++ {
		body = AppendEntry(body, Entry{Seq: 10 + i, Data: []byte("tx")})
	}
	f.Add("3", "", body)
	f.Add("", "7", []byte("one transaction"))
	f.Add("2", "", []byte{1, 200, 1, 'x'})
	f.Add("many", "", body)
	f.Add("-1", "1", []byte{})
	f.Fuzz(func(t *testing.T, bundle, seq string, data []byte) {
		h := nats.Header{}
		if bundle != "" {
			h.Set(HeaderBundle, bundle)
		}
		h.Set(HeaderSeq, seq)
		got, err := Entries(h, data)
		if err != nil {
			if !errors.Is(err, casualdb.ErrGarbled) {
				t.Fatalf("error %v does not wrap ErrGarbled", err)
			}
			return
		}
		if bundle == "" {
			if len(got) != 1 || !bytes.Equal(got[0].Data, data) {
				t.Fatalf("a single message decoded into %d entries", len(got))
			}
			return
		}
		var again []byte
		for _, e := range got {
			again = AppendEntry(again, e)
		}
		back, err := Entries(h, again)
		if err != nil || len(back) != len(got) {
			t.Fatalf("re-framed %d entries: %d, %v", len(got), len(back), err)
		}
		for i := range got {
			if back[i].Seq != got[i].Seq || !bytes.Equal(back[i].Data, got[i].Data) {
				t.Fatalf("entry %d: %d/%q, re-framed %d/%q", i, got[i].Seq, got[i].Data, back[i].Seq, back[i].Data)
			}
		}
	})
}

// FuzzDecodeProof: a relayed transaction's proof header, as a peer may send
// it: decoded within its bounds (index below count, at most 64 hashes), or
// an error. What decodes encodes into a proof that decodes the same.
func FuzzDecodeProof(f *testing.F) {
	f.Add(encodeProof(0, 1, nil, []byte("signature")))
	f.Add(encodeProof(3, 8, [][32]byte{{1}, {2}, {3}}, []byte("sig")))
	f.Add([]byte{0, 1, 65})
	f.Add([]byte{5, 2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		index, count, path, sig, err := decodeProof(b)
		if err != nil {
			return
		}
		if index >= count || len(path) > 64 {
			t.Fatalf("decoded index %d of %d with %d hashes", index, count, len(path))
		}
		i2, c2, p2, s2, err := decodeProof(encodeProof(int(index), int(count), path, sig))
		if err != nil || i2 != index || c2 != count || len(p2) != len(path) || !bytes.Equal(s2, sig) {
			t.Fatalf("re-encoded proof: %d %d %d %v", i2, c2, len(p2), err)
		}
		for i := range path {
			if p2[i] != path[i] {
				t.Fatalf("hash %d differs after re-encoding", i)
			}
		}
	})
}

// FuzzAttachProofs: the signature headers of a message of five
// transactions, as a peer may send them: proofs attached, or an error
// wrapping ErrGarbled; never a panic (a run's count near MaxInt once
// indexed past the message).
func FuzzAttachProofs(f *testing.F) {
	f.Add("1 5 AAAA", "")
	f.Add("1 3 AAAA", "4 2 AAAA")
	f.Add("2 9223372036854775807 AAAA", "")
	f.Add("9 1 AAAA", "x")
	f.Fuzz(func(t *testing.T, run1, run2 string) {
		m := &casualdb.InboxMsg{Origin: "a", Epoch: "e"}
		for seq := uint64(1); seq <= 5; seq++ {
			m.Txs = append(m.Txs, casualdb.InboxTx{Seq: seq, Data: []byte{byte(seq)}})
		}
		h := nats.Header{HeaderSig: {run1, run2}}
		if err := attachProofs(h, m, []byte("certificate")); err != nil && !errors.Is(err, casualdb.ErrGarbled) {
			t.Fatalf("error %v does not wrap ErrGarbled", err)
		}
	})
}
