package push

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/controlplane/translate"
	"github.com/zmesh/zmesh/controlplane/xds"
)

type countingReporter struct{ n chan int }

func (r countingReporter) Report(_ context.Context, cs []translate.Condition) { r.n <- len(cs) }

// A burst of snapshots is translated once or a few times, never once per
// snapshot, and the newest one wins.
func TestBurstIsDebounced(t *testing.T) {
	srv := xds.New(nil, nil, xds.TypeAddress, xds.TypeAuthorization)
	rep := countingReporter{n: make(chan int, 100)}
	var logs bytes.Buffer
	p := &Pipeline{XDS: srv, Options: translate.Options{Mesh: model.DefaultMesh()}, Reporter: rep,
		Log: slog.New(slog.NewTextHandler(&logs, nil)), Debounce: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond}
	if p.Pushed() {
		t.Fatal("pushed before any snapshot")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go p.Run(ctx)

	for i := range 50 {
		p.Update(modeltest.Mesh(1, 1, i%5+1))
	}
	last := modeltest.Mesh(2, 3, 4)
	p.Update(last)
	deadline := time.After(5 * time.Second)
	translations := 0
	for {
		select {
		case <-rep.n:
			translations++
		case <-deadline:
			t.Fatal("no translation")
		case <-time.After(300 * time.Millisecond):
			if translations == 0 {
				continue
			}
			if translations > 3 {
				t.Errorf("%d translations for one burst of 51 snapshots", translations)
			}
			// The newest snapshot is what is served: 2×3×4 pods + 6 services.
			if got := len(srv.Resources(xds.TypeAddress)); got != 24+6 {
				t.Errorf("serving %d addresses, want 30 (the last snapshot)", got)
			}
			if !p.Pushed() {
				t.Error("Pushed is false after a push")
			}
			if !strings.Contains(logs.String(), "pushed") {
				t.Errorf("no push logged: %s", logs.String())
			}
			t.Logf("51 snapshots -> %d translations", translations)
			return
		}
	}
}
