package meshclient

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// bundleRecheck is how often, at most, the root file is looked at again.
// Roots rotate over hours (old and new are served side by side meanwhile),
// so a second is prompt; it bounds the cost to one stat per second however
// many handshakes ask.
const bundleRecheck = time.Second

// Bundle is the mesh's trust bundle read from a PEM file and re-read when
// the file changes, so a root rotation (a new root added beside the old,
// the old removed later) takes effect without a restart. A file that stops
// parsing, or holds no certificate, keeps the last good roots in force and
// is logged: trust is never dropped to nothing by a bad write.
type Bundle struct {
	td   spiffeid.TrustDomain
	path string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	cur     *x509bundle.Bundle
	pool    *x509.CertPool
	raw     []byte
	stat    fileStamp
	checked time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// LoadBundle reads the roots of td from path. The file must parse now.
func LoadBundle(td spiffeid.TrustDomain, path string, log *slog.Logger) (*Bundle, error) {
	if log == nil {
		log = slog.Default()
	}
	b := &Bundle{td: td, path: path, log: log, now: time.Now}
	st, err := stampOf(path)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := b.set(raw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	b.stat, b.checked = st, b.now()
	return b, nil
}

func (b *Bundle) set(raw []byte) error {
	nb, err := x509bundle.Parse(b.td, raw)
	if err != nil {
		return err
	}
	if len(nb.X509Authorities()) == 0 {
		return errors.New("no certificate")
	}
	pool := x509.NewCertPool()
	for _, c := range nb.X509Authorities() {
		pool.AddCert(c)
	}
	b.cur, b.pool, b.raw = nb, pool, raw
	return nil
}

// refresh re-reads the file if it changed since the last look, at most once
// per bundleRecheck. Callers hold b.mu.
func (b *Bundle) refresh() {
	now := b.now()
	if now.Sub(b.checked) < bundleRecheck {
		return
	}
	b.checked = now
	st, err := stampOf(b.path)
	if err != nil || st == b.stat {
		return
	}
	raw, err := os.ReadFile(b.path)
	if err != nil {
		return
	}
	b.stat = st
	if bytes.Equal(raw, b.raw) {
		return
	}
	if err := b.set(raw); err != nil {
		b.log.Warn("trust bundle changed but does not load; keeping the roots in force", "path", b.path, "reason", err.Error())
		return
	}
	b.log.Info("trust bundle reloaded", "path", b.path, "roots", len(b.cur.X509Authorities()))
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (b *Bundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != b.td {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refresh()
	return b.cur, nil
}

// Pool returns the roots in force as a certificate pool.
func (b *Bundle) Pool() *x509.CertPool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refresh()
	return b.pool
}

// clientTLS verifies a server's certificate against the roots in force at
// each handshake (a fixed RootCAs would keep the roots of process start).
func (b *Bundle) clientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is done below, against the current pool, with the
		// same checks crypto/tls makes (chain and server name).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots: b.Pool(), Intermediates: inter, DNSName: cs.ServerName,
			})
			return err
		},
	}
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}
