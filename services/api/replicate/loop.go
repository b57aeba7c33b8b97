package replicate

import (
	"context"
	"sync"
	"time"
)

// kicker wakes a loop: Kick asks for a pass now (a pass already asked
// for and not begun absorbs it).
type kicker struct {
	once sync.Once
	ch   chan struct{}
}

func (k *kicker) c() chan struct{} {
	k.once.Do(func() { k.ch = make(chan struct{}, 1) })
	return k.ch
}

// Kick asks for a pass now.
func (k *kicker) Kick() {
	select {
	case k.c() <- struct{}{}:
	default:
	}
}

// every runs pass at once, then after each interval or kick, until ctx
// ends; then it runs stop (without ctx's cancellation), for the lease.
func (k *kicker) every(ctx context.Context, interval time.Duration, pass func(context.Context), stop func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pass(ctx)
		select {
		case <-ctx.Done():
			stop(context.WithoutCancel(ctx))
			return
		case <-t.C:
		case <-k.c():
		}
	}
}

// workers runs at most one goroutine per id (a drill, a failover).
type workers struct {
	mu      sync.Mutex
	running map[string]bool
	wg      sync.WaitGroup
}

// start runs fn(ctx) in a goroutine unless one runs for id already or
// skip (called under the lock) says not now; it reports whether it did.
func (w *workers) start(ctx context.Context, id string, skip func() bool, fn func(context.Context)) bool {
	w.mu.Lock()
	if w.running == nil {
		w.running = map[string]bool{}
	}
	if w.running[id] || skip != nil && skip() {
		w.mu.Unlock()
		return false
	}
	w.running[id] = true
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() {
			w.mu.Lock()
			delete(w.running, id)
			w.mu.Unlock()
		}()
		fn(ctx)
	}()
	return true
}

// wait waits for the goroutines started.
func (w *workers) wait() { w.wg.Wait() }
