package conflict

import (
	"reflect"
	"testing"

	"github.com/casualdb/casualdb"
)

// ver builds a version for table tests.
func ver(wall int64, logical uint32, origin casualdb.SiteID, clock vc) casualdb.Version {
	return casualdb.Version{HLC: casualdb.HLC{Wall: wall, Logical: logical}, Origin: origin, VC: clock}
}

func TestLess(t *testing.T) {
	tests := []struct {
		name string
		a, b casualdb.Version
		want bool
	}{
		{"earlier wall", ver(1, 9, "z", nil), ver(2, 0, "a", nil), true},
		{"later wall", ver(2, 0, "a", nil), ver(1, 9, "z", nil), false},
		{"same wall, smaller logical", ver(5, 1, "z", nil), ver(5, 2, "a", nil), true},
		{"same wall, larger logical", ver(5, 2, "a", nil), ver(5, 1, "z", nil), false},
		{"same hlc, smaller origin", ver(5, 1, "a", nil), ver(5, 1, "b", nil), true},
		{"same hlc, larger origin", ver(5, 1, "b", nil), ver(5, 1, "a", nil), false},
		{"origin compared bytewise", ver(5, 1, "B", nil), ver(5, 1, "a", nil), true},
		{"identical", ver(5, 1, "a", vc{"a": 1}), ver(5, 1, "a", vc{"a": 1}), false},
		{"clock ignored", ver(5, 1, "a", vc{"a": 9}), ver(5, 1, "b", vc{"b": 1}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Less(tt.a, tt.b); got != tt.want {
				t.Errorf("Less(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	ptr := func(v casualdb.Version) *casualdb.Version { return &v }
	tests := []struct {
		name     string
		stored   *casualdb.Version
		incoming casualdb.Version
		want     Decision
	}{
		{
			name:     "fresh",
			incoming: ver(10, 0, "a", vc{"a": 1}),
			want:     Decision{Outcome: Fresh, Apply: true, Stored: ver(10, 0, "a", vc{"a": 1}), Rule: RuleFresh},
		},
		{
			name:     "causal overwrite",
			stored:   ptr(ver(10, 0, "a", vc{"a": 1})),
			incoming: ver(10, 1, "b", vc{"a": 1, "b": 1}),
			want:     Decision{Outcome: Overwrite, Apply: true, Stored: ver(10, 1, "b", vc{"a": 1, "b": 1}), Rule: RuleCausal},
		},
		{
			name:     "duplicate",
			stored:   ptr(ver(10, 0, "a", vc{"a": 1})),
			incoming: ver(10, 0, "a", vc{"a": 1}),
			want:     Decision{Outcome: Stale, Apply: false, Stored: ver(10, 0, "a", vc{"a": 1}), Rule: RuleStale},
		},
		{
			name:     "superseded",
			stored:   ptr(ver(10, 1, "b", vc{"a": 1, "b": 1})),
			incoming: ver(10, 0, "a", vc{"a": 1}),
			want:     Decision{Outcome: Stale, Apply: false, Stored: ver(10, 1, "b", vc{"a": 1, "b": 1}), Rule: RuleStale},
		},
		{
			name:     "conflict, incoming wins",
			stored:   ptr(ver(10, 0, "a", vc{"a": 1})),
			incoming: ver(20, 0, "b", vc{"b": 1}),
			want:     Decision{Outcome: Conflict, Apply: true, Stored: ver(20, 0, "b", vc{"a": 1, "b": 1}), Rule: RuleLWW},
		},
		{
			name:     "conflict, incoming loses",
			stored:   ptr(ver(20, 0, "b", vc{"b": 1})),
			incoming: ver(10, 0, "a", vc{"a": 1}),
			want:     Decision{Outcome: Conflict, Apply: false, Stored: ver(20, 0, "b", vc{"a": 1, "b": 1}), Rule: RuleLWW},
		},
		{
			name:     "conflict, equal hlc, origin decides",
			stored:   ptr(ver(10, 1, "b", vc{"a": 1, "b": 1})),
			incoming: ver(10, 1, "c", vc{"a": 1, "c": 1}),
			want:     Decision{Outcome: Conflict, Apply: true, Stored: ver(10, 1, "c", vc{"a": 1, "b": 1, "c": 1}), Rule: RuleLWW},
		},
		{
			name:     "clocks say overwrite, lww says loses",
			stored:   ptr(ver(20, 0, "a", vc{"a": 1})),
			incoming: ver(10, 0, "b", vc{"a": 1, "b": 1}),
			want:     Decision{Outcome: Conflict, Apply: false, Stored: ver(20, 0, "a", vc{"a": 1, "b": 1}), Rule: RuleLWW},
		},
		{
			name:     "clocks say stale, lww says wins",
			stored:   ptr(ver(10, 0, "b", vc{"a": 1, "b": 1})),
			incoming: ver(20, 0, "a", vc{"a": 1}),
			want:     Decision{Outcome: Conflict, Apply: true, Stored: ver(20, 0, "a", vc{"a": 1, "b": 1}), Rule: RuleLWW},
		},
		{
			name:     "equal clocks, different versions",
			stored:   ptr(ver(20, 0, "a", vc{"a": 1})),
			incoming: ver(10, 0, "a", vc{"a": 1}),
			want:     Decision{Outcome: Conflict, Apply: false, Stored: ver(20, 0, "a", vc{"a": 1}), Rule: RuleLWW},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var storedBefore casualdb.Version
			if tt.stored != nil {
				storedBefore = *tt.stored
				storedBefore.VC = tt.stored.VC.Clone()
			}
			incomingVC := tt.incoming.VC.Clone()

			got := Decide(tt.stored, tt.incoming)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decide(%v, %v) = %+v, want %+v", tt.stored, tt.incoming, got, tt.want)
			}

			got.Stored.VC["x"] = 42 // must not reach the inputs
			if tt.stored != nil && !reflect.DeepEqual(*tt.stored, storedBefore) {
				t.Errorf("Decide modified stored: got %v %v, want %v %v", tt.stored, tt.stored.VC, storedBefore, storedBefore.VC)
			}
			if CompareClocks(tt.incoming.VC, incomingVC) != Equal {
				t.Errorf("Decide modified incoming: got %v, want %v", tt.incoming.VC, incomingVC)
			}
		})
	}
}

func TestOutcome_String(t *testing.T) {
	for o, want := range map[Outcome]string{Fresh: "fresh", Overwrite: "overwrite", Stale: "stale", Conflict: "conflict", -1: "Outcome(-1)"} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}
