package stream

import (
	"math/rand/v2"
	"time"
)

// RetryPolicy governs reconnects of a dropped connection: exponential
// backoff with jitter, at most MaxAttempts consecutive failures without an
// ack in between.
type RetryPolicy struct {
	MaxAttempts    int           // default 8
	InitialBackoff time.Duration // default 250ms
	MaxBackoff     time.Duration // default 15s
}

func (p *RetryPolicy) applyDefaults() {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 8
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 250 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 15 * time.Second
	}
}

// backoff is the delay before attempt n (1-based): doubling from
// InitialBackoff up to MaxBackoff, with the upper half jittered.
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.MaxBackoff
	if n-1 < 30 {
		d = min(p.InitialBackoff<<(n-1), p.MaxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}
