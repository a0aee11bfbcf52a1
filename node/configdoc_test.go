package node

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// configKeys returns the YAML keys of the struct type t, dotted, each
// prefixed with prefix: a nested struct adds its keys ("database.dsn"),
// not its own. A list of structs is a key and adds its elements' keys
// after "[]" ("peers", "peers[].name"); a map of structs is a key and adds
// its values' keys after a placeholder named by the map's key in the
// singular ("conflicts.tables", "conflicts.tables.<table>.merge"). Every
// other field (durations, lists of strings) is one key. Fields without a
// yaml tag get yaml.v3's name, the field's name in lower case; "-" fields
// are skipped and ",inline" ones add their keys under prefix.
func configKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if slices.Contains(strings.Split(opts, ","), "inline") {
			out = append(out, configKeys(ft, prefix)...)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		key := prefix + name
		switch {
		case isSection(ft):
			out = append(out, configKeys(ft, key+".")...)
		case (ft.Kind() == reflect.Slice || ft.Kind() == reflect.Array) && isSection(ft.Elem()):
			out = append(out, key)
			out = append(out, configKeys(ft.Elem(), key+"[].")...)
		case ft.Kind() == reflect.Map && isSection(ft.Elem()):
			out = append(out, key)
			out = append(out, configKeys(ft.Elem(), key+".<"+strings.TrimSuffix(name, "s")+">.")...)
		default:
			out = append(out, key)
		}
	}
	return out
}

// isSection reports whether t is a struct of keys rather than one value.
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && t != reflect.TypeOf(time.Time{})
}

// documentedKeys returns the keys of the README's configuration table: the
// first cell, without backticks, of every row of the table whose header is
// "| key | default | meaning |".
func documentedKeys(readme string) []string {
	var out []string
	in := false
	for _, line := range strings.Split(readme, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if in {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if !in {
			in = len(cells) >= 3 && cells[0] == "key" && cells[1] == "default" && cells[2] == "meaning"
			continue
		}
		if strings.Trim(cells[0], "-: ") == "" {
			continue // the header's separator row
		}
		out = append(out, strings.Trim(cells[0], "`"))
	}
	return out
}

func TestConfigDoc_ConfigKeys(t *testing.T) {
	type inner struct {
		A    string        `yaml:"a"`
		Wait time.Duration `yaml:"wait"`
	}
	type embedded struct {
		E int `yaml:"e"`
	}
	type cfg struct {
		Top      string           `yaml:"top"`
		Section  inner            `yaml:"section"`
		Ptr      *inner           `yaml:"ptr"`
		Items    []inner          `yaml:"items"`
		Names    []string         `yaml:"names"`
		Tables   map[string]inner `yaml:"tables"`
		Labels   map[string]string
		Skipped  string    `yaml:"-"`
		Inlined  embedded  `yaml:",inline"`
		When     time.Time `yaml:"when"`
		unexport string
	}
	got := configKeys(reflect.TypeOf(cfg{}), "")
	want := []string{
		"top", "section.a", "section.wait", "ptr.a", "ptr.wait",
		"items", "items[].a", "items[].wait", "names",
		"tables", "tables.<table>.a", "tables.<table>.wait",
		"labels", "e", "when",
	}
	if !slices.Equal(got, want) {
		t.Errorf("configKeys:\ngot  %q\nwant %q", got, want)
	}
}

func TestConfigDoc_DocumentedKeys(t *testing.T) {
	readme := strings.Join([]string{
		"| flag | default | meaning |",
		"|---|---|---|",
		"| `--json` | off | not a key |",
		"",
		"## Configuration",
		"",
		"| key | default | meaning |",
		"|---|---|---|",
		"| `site` | (required) | the name |",
		"| `cluster.secret_key` | (empty) | `head -c 32 /dev/urandom \\| base64` |",
		"| `conflicts.tables.<table>.merge` | `row` | per table |",
		"",
		"| key | default | meaning |",
		"|---|---|---|",
		"| `later` | x | a second table is not read |",
	}, "\n")
	got := documentedKeys(readme)
	want := []string{"site", "cluster.secret_key", "conflicts.tables.<table>.merge"}
	if !slices.Equal(got, want) {
		t.Errorf("documentedKeys: got %q, want %q", got, want)
	}
}

// TestConfigDoc_EveryKeyDocumented checks that README.md's configuration
// table lists every key of Config, and only those.
func TestConfigDoc_EveryKeyDocumented(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	documented := documentedKeys(string(b))
	if len(documented) == 0 {
		t.Fatal("README.md has no configuration table (| key | default | meaning |)")
	}
	code := configKeys(reflect.TypeOf(Config{}), "")
	seen := map[string]bool{}
	for _, k := range documented {
		if seen[k] {
			t.Errorf("README.md documents config key %q twice", k)
		}
		seen[k] = true
		if !slices.Contains(code, k) {
			t.Errorf("README.md documents config key %q, which Config does not have", k)
		}
	}
	for _, k := range code {
		if !seen[k] {
			t.Errorf("config key %q is not documented in README.md's configuration table", k)
		}
	}
}
