package route

import "testing"

// TestDecodeQuery follows Envoy's own cases for urlDecodeQueryParameter.
func TestDecodeQuery(t *testing.T) {
	cases := map[string]string{
		"a%26b":         "a&b",
		"a%3Db":         "a=b",
		"a%23b":         "a#b",
		"hello%20world": "hello%20world",
		"up%7cdown":     "up%7cdown",
		"%28x%29%2B+":   "(x)++",
		"too%20larg%e":  "too%20larg%e",
		"too%20large%":  "too%20large%",
		"%25%41%5C%7E":  "%A%5C~",
		"%00%7F%80%FF":  "%00%7F%80%FF",
		"plain":         "plain",
	}
	for in, want := range cases {
		if got := decodeQuery(in); got != want {
			t.Errorf("decodeQuery(%q) = %q, want %q", in, got, want)
		}
	}
}
