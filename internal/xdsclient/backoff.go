package xdsclient

import (
	"math/rand/v2"
	"time"
)

// backoff doubles from min to max; each wait is drawn from [d/2, d) so that
// ztunnels disconnected together (a control-plane restart) do not come back
// in lockstep.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur < b.min {
		b.cur = b.min
	}
	d := b.cur
	b.cur = min(2*b.cur, b.max)
	half := d / 2
	return half + rand.N(d-half)
}

func (b *backoff) reset() { b.cur = b.min }
