package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zmesh/zmesh/identity"
	"github.com/zmesh/zmesh/internal/testutil"
)

// --tokens-file is read again when it changes, as TokenReview knows a new
// service account at once: a caller added to the file (a waypoint whose
// Gateway came after the start) gets its certificate without a restart, a
// caller removed from it is refused, and a version that does not parse
// leaves the last good one in force.
func TestTokensFileReadAgain(t *testing.T) {
	z := startDirectoryMode(t)
	cc := z.secureConn(t)
	fetch := func(token string, id spiffeid.ID) error {
		certs, err := identity.NewCertClient(cc, func(context.Context) (string, error) { return token, nil }, 0)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err = certs.Fetch(ctx, id)
		return err
	}
	wp := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/waypoint")
	web := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	if err := fetch("tok-w", wp); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a token not in the file: %v, want Unauthenticated", err)
	}
	write := func(content string) {
		if err := os.WriteFile(z.tokens, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tok-w spiffe://cluster.local/ns/shop/sa/waypoint -\n")
	testutil.Eventually(t, 10*time.Second, "the added token is accepted", func() error { return fetch("tok-w", wp) })
	if err := fetch("tok-a", web); status.Code(err) != codes.Unauthenticated {
		t.Errorf("the removed ztunnel token: %v, want Unauthenticated", err)
	}
	write("tok-w spiffe://cluster.local/ns/shop/sa/waypoint\n") // two fields: refused
	time.Sleep(time.Second)                                     // several reads of the file
	if err := fetch("tok-w", wp); err != nil {
		t.Errorf("after a version that does not parse: %v, want the last good version in force", err)
	}
}
