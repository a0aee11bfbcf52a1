package conflict

import (
	"reflect"
	"testing"

	"github.com/casualdb/casualdb"
)

type vc = casualdb.VectorClock

func TestCompareClocks(t *testing.T) {
	tests := []struct {
		name string
		a, b vc
		want Ordering
	}{
		{"both nil", nil, nil, Equal},
		{"nil and explicit zero", nil, vc{"a": 0}, Equal},
		{"explicit zero and missing", vc{"a": 1, "b": 0}, vc{"a": 1}, Equal},
		{"same", vc{"a": 1, "b": 2}, vc{"a": 1, "b": 2}, Equal},
		{"nil before", nil, vc{"a": 1}, Before},
		{"nil after", vc{"a": 1}, nil, After},
		{"smaller entry", vc{"a": 1}, vc{"a": 2}, Before},
		{"larger entry", vc{"a": 2}, vc{"a": 1}, After},
		{"missing entry in a", vc{"a": 1}, vc{"a": 1, "b": 1}, Before},
		{"missing entry in b", vc{"a": 1, "b": 1}, vc{"a": 1}, After},
		{"disjoint", vc{"a": 1}, vc{"b": 1}, Concurrent},
		{"crossed", vc{"a": 1, "b": 2}, vc{"a": 2, "b": 1}, Concurrent},
		{"crossed with missing", vc{"a": 2}, vc{"a": 1, "b": 1}, Concurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CompareClocks(tt.a, tt.b); got != tt.want {
				t.Errorf("CompareClocks(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

func TestJoin(t *testing.T) {
	tests := []struct {
		name string
		a, b vc
		want vc
	}{
		{"both nil", nil, nil, vc{}},
		{"nil and clock", nil, vc{"a": 1}, vc{"a": 1}},
		{"clock and nil", vc{"a": 1}, nil, vc{"a": 1}},
		{"pointwise max", vc{"a": 3, "b": 1}, vc{"a": 1, "b": 2, "c": 5}, vc{"a": 3, "b": 2, "c": 5}},
		{"zeros dropped", vc{"a": 0, "b": 1}, vc{"c": 0}, vc{"b": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := tt.a.Clone(), tt.b.Clone()
			got := Join(tt.a, tt.b)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Join(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
			got["a"] += 100
			got["z"] = 1
			if CompareClocks(tt.a, a) != Equal || CompareClocks(tt.b, b) != Equal {
				t.Errorf("Join shares or modified its inputs: got %v, %v, want %v, %v", tt.a, tt.b, a, b)
			}
		})
	}
}

func TestDominates(t *testing.T) {
	tests := []struct {
		name string
		a, b vc
		want bool
	}{
		{"both nil", nil, nil, true},
		{"equal", vc{"a": 1}, vc{"a": 1}, true},
		{"greater", vc{"a": 2, "b": 1}, vc{"a": 1}, true},
		{"smaller", vc{"a": 1}, vc{"a": 2}, false},
		{"missing entry", vc{"a": 1}, vc{"a": 1, "b": 1}, false},
		{"explicit zero", nil, vc{"a": 0}, true},
		{"concurrent", vc{"a": 1}, vc{"b": 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Dominates(tt.a, tt.b); got != tt.want {
				t.Errorf("Dominates(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

func TestOrdering_String(t *testing.T) {
	for o, want := range map[Ordering]string{Equal: "equal", Before: "before", After: "after", Concurrent: "concurrent", 9: "Ordering(9)"} {
		if got := o.String(); got != want {
			t.Errorf("Ordering(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}
