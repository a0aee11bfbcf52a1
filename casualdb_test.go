package casualdb

import "testing"

func TestDisplayKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{`["42"]`, "42"},
		{`["7","a"]`, "(7,a)"},
		{`["a b"]`, `["a b"]`},
		{`["1","x,y"]`, `["1","x,y"]`},
		{`[""]`, `[""]`},
		{`["a\nb"]`, `["a\nb"]`},
		{`not json`, `not json`},
		{`[]`, `[]`},
	}
	for _, tt := range tests {
		if got := DisplayKey(tt.in); got != tt.want {
			t.Errorf("DisplayKey(%s): got %q, want %q", tt.in, got, tt.want)
		}
	}
}
