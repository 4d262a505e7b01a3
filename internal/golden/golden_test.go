package golden

import "testing"

func TestRoundTripAndSet(t *testing.T) {
	in := "comment line\n-- input.yaml --\na: 1\n-- output --\nold\n"
	ar := Parse([]byte(in))
	if got, ok := ar.File("input.yaml"); !ok || string(got) != "a: 1\n" {
		t.Fatalf("input.yaml = %q, %v", got, ok)
	}
	if _, ok := ar.File("missing"); ok {
		t.Fatal("a missing file was found")
	}
	if string(ar.Format()) != in {
		t.Fatalf("round trip:\n%s", ar.Format())
	}
	ar.Set("output", []byte("new"))
	ar.Set("cases", []byte("x\n"))
	want := "comment line\n-- input.yaml --\na: 1\n-- output --\nnew\n-- cases --\nx\n"
	if got := string(ar.Format()); got != want {
		t.Fatalf("after Set:\n%s\nwant:\n%s", got, want)
	}
}
