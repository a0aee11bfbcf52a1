package hint

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeDigest: a gossiped digest from the network decodes or is an
// error, never a panic; what decodes encodes to a digest that decodes to the
// same.
func FuzzDecodeDigest(f *testing.F) {
	f.Add([]byte(`{"applied":{"a":{"seq":7,"epoch":"e1"}},"expired":[{"f":"c","o":"a","e":"e1","s":7,"l":1792,"n":5}]}`))
	f.Add([]byte(`{"applied":{}}`))
	f.Add([]byte(`{"applied":{"NOT A SITE":{"seq":1}}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeDigest(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("encode a decoded digest: %v", err)
		}
		again, err := DecodeDigest(out)
		if err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		if !reflect.DeepEqual(normal(again), normal(d)) {
			t.Fatalf("round trip: got %+v, want %+v", again, d)
		}
	})
}

// normal makes empty and missing collections alike.
func normal(d Digest) Digest {
	if len(d.Applied) == 0 {
		d.Applied = nil
	}
	if len(d.Expired) == 0 {
		d.Expired = nil
	}
	return d
}
