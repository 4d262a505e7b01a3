package identity

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrUnknownToken is returned by StaticTokenAuthenticator for a token it does
// not hold.
var ErrUnknownToken = errors.New("unknown token")

// StaticTokenAuthenticator authenticates callers by a fixed table of bearer
// tokens, for running without a cluster (the demo, tests). In a cluster,
// Kubernetes TokenReview takes its place.
type StaticTokenAuthenticator struct {
	// Keyed by the token's SHA-256, so that a lookup's timing reveals
	// nothing useful about the tokens held.
	callers map[[sha256.Size]byte]Caller
}

// NewStaticTokenAuthenticator returns an authenticator for the given
// token → caller table.
func NewStaticTokenAuthenticator(tokens map[string]Caller) (*StaticTokenAuthenticator, error) {
	a := &StaticTokenAuthenticator{callers: make(map[[sha256.Size]byte]Caller, len(tokens))}
	for tok, c := range tokens {
		if err := checkToken(tok); err != nil {
			return nil, fmt.Errorf("token for %s: %w", c.ID, err)
		}
		if c.ID.IsZero() {
			return nil, errors.New("token with empty caller identity")
		}
		a.callers[sha256.Sum256([]byte(tok))] = c
	}
	return a, nil
}

// LoadStaticTokens reads a token file; see ParseStaticTokens for its format.
func LoadStaticTokens(path string) (*StaticTokenAuthenticator, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load tokens: %w", err)
	}
	defer f.Close()
	a, err := ParseStaticTokens(f)
	if err != nil {
		return nil, fmt.Errorf("load tokens from %s: %w", path, err)
	}
	return a, nil
}

// ParseStaticTokens reads a token file: one caller per line, three fields
// separated by blanks,
//
//	<token> <spiffe-id> <node>
//
// where node is "-" for a caller bound to no node. Blank lines and lines
// starting with '#' are skipped. Anything else (a missing or extra field, an
// invalid SPIFFE ID, a token given twice) is an error naming the line.
func ParseStaticTokens(r io.Reader) (*StaticTokenAuthenticator, error) {
	a := &StaticTokenAuthenticator{callers: map[[sha256.Size]byte]Caller{}}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 3 {
			return nil, fmt.Errorf("line %d: %d fields, want 3 (token spiffe-id node)", line, len(fields))
		}
		if err := checkToken(fields[0]); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		id, err := spiffeid.FromString(fields[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: spiffe id: %w", line, err)
		}
		node := fields[2]
		if node == "-" {
			node = ""
		}
		key := sha256.Sum256([]byte(fields[0]))
		if _, dup := a.callers[key]; dup {
			return nil, fmt.Errorf("line %d: token given twice", line)
		}
		a.callers[key] = Caller{ID: id, Node: node}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	return a, nil
}

// checkToken rejects tokens that could not travel in an authorization
// header intact.
func checkToken(tok string) error {
	if tok == "" {
		return errors.New("empty token")
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("token has byte %#x at %d: want printable ascii without blanks", c, i)
		}
	}
	return nil
}

// Authenticate implements Authenticator.
func (a *StaticTokenAuthenticator) Authenticate(_ context.Context, token string) (Caller, error) {
	c, ok := a.callers[sha256.Sum256([]byte(token))]
	if !ok {
		return Caller{}, ErrUnknownToken
	}
	return c, nil
}

// Len returns how many tokens are held.
func (a *StaticTokenAuthenticator) Len() int { return len(a.callers) }
