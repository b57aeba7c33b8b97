package dashboard

import (
	"sync"
	"time"
)

// throttle counts failed logins per key (a user name, a client address)
// in fixed windows. Its memory is bounded: beyond max keys the expired
// ones go first, then the oldest window.
type throttle struct {
	mu     sync.Mutex
	limit  int
	window time.Duration
	max    int
	now    func() time.Time
	keys   map[string]*attempts
}

type attempts struct {
	n     int
	start time.Time
}

func newThrottle(limit int, window time.Duration, max int, now func() time.Time) *throttle {
	return &throttle{limit: limit, window: window, max: max, now: now, keys: map[string]*attempts{}}
}

// blocked reports whether key used up its attempts, and for how long it
// stays blocked.
func (t *throttle) blocked(key string) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.keys[key]
	if !ok {
		return 0, false
	}
	left := a.start.Add(t.window).Sub(t.now())
	if left <= 0 {
		delete(t.keys, key)
		return 0, false
	}
	return left, a.n >= t.limit
}

// fail counts a failed attempt of key.
func (t *throttle) fail(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	a, ok := t.keys[key]
	if ok && !now.Before(a.start.Add(t.window)) {
		ok = false
	}
	if !ok {
		if len(t.keys) >= t.max {
			t.evict(now)
		}
		a = &attempts{start: now}
		t.keys[key] = a
	}
	a.n++
}

// reset forgets key (a successful login).
func (t *throttle) reset(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.keys, key)
}

// evict makes room: the expired windows, else the oldest one.
func (t *throttle) evict(now time.Time) {
	var oldest string
	var oldestStart time.Time
	for k, a := range t.keys {
		if !now.Before(a.start.Add(t.window)) {
			delete(t.keys, k)
			continue
		}
		if oldest == "" || a.start.Before(oldestStart) {
			oldest, oldestStart = k, a.start
		}
	}
	if len(t.keys) >= t.max && oldest != "" {
		delete(t.keys, oldest)
	}
}

func (t *throttle) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}
