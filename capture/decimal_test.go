package capture

import "testing"

func TestSubDecimal(t *testing.T) {
	tests := []struct{ a, b, want string }{
		{"10", "3", "7"},
		{"3", "10", "-7"},
		{"5", "5", "0"},
		{"0", "0", "0"},
		{"100.50", "0.25", "100.25"},
		{"1", "0.001", "0.999"},
		{"-2.5", "-7", "4.5"},
		{"123456789012345678901234567890", "1", "123456789012345678901234567889"},
		{"0.10", "0.1", "0"},
	}
	for _, tt := range tests {
		got, err := SubDecimal(tt.a, tt.b)
		if err != nil || got != tt.want {
			t.Errorf("SubDecimal(%s, %s) = %q, %v; want %q", tt.a, tt.b, got, err, tt.want)
		}
	}
	for _, bad := range [][2]string{{"NaN", "1"}, {"1", "1e5"}, {"x", "1"}, {"1", "1/2"}, {"Infinity", "0"}} {
		if got, err := SubDecimal(bad[0], bad[1]); err == nil {
			t.Errorf("SubDecimal(%s, %s) = %q, want an error", bad[0], bad[1], got)
		}
	}
}
