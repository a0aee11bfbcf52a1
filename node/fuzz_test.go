package node

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/casualdb/casualdb"
)

// FuzzParseConfig: any YAML parses and validates to a configuration or to
// an error wrapping casualdb.ErrConfig (which names the key), never a
// panic.
func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"testdata/good.yml", "testdata/minimal.yml", "testdata/bad-cluster-key.yml", "testdata/bad-peer-url.yml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("site: a\ndatabase: {dsn: 'postgres://x@y/z'}\nnats: {listen: '0.0.0.0:1', insecure: true}\n"))
	f.Add([]byte("site: [\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(bytes.NewReader(b))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil && !errors.Is(err, casualdb.ErrConfig) {
			t.Fatalf("error %v does not wrap ErrConfig", err)
		}
	})
}
