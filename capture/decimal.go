package capture

import (
	"fmt"
	"math/big"
	"strings"
)

// SubDecimal returns a - b for decimal numbers in PostgreSQL's text form
// (integer and numeric columns: digits, an optional sign and point), exactly,
// with as many decimals as the more precise operand; "0" for zero.
func SubDecimal(a, b string) (string, error) {
	x, ok := new(big.Rat).SetString(a)
	if !ok || strings.ContainsAny(a, "eE/") {
		return "", fmt.Errorf("not a decimal number: %q", a)
	}
	y, ok := new(big.Rat).SetString(b)
	if !ok || strings.ContainsAny(b, "eE/") {
		return "", fmt.Errorf("not a decimal number: %q", b)
	}
	d := x.Sub(x, y)
	if d.Sign() == 0 {
		return "0", nil
	}
	return d.FloatString(max(scale(a), scale(b))), nil
}

// scale is the number of digits after the point.
func scale(s string) int {
	if _, frac, ok := strings.Cut(s, "."); ok {
		return len(frac)
	}
	return 0
}
