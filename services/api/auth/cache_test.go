package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/keystone"
)

// fakeValidator knows a set of tokens and counts its calls.
type fakeValidator struct {
	mu      sync.Mutex
	tokens  map[string]*keystone.TokenInfo
	down    bool          // answer as an unreachable Keystone
	block   chan struct{} // when set, each call waits for it to close
	calls   atomic.Int64
	entered chan struct{} // when set, signalled at each call
}

func (f *fakeValidator) Validate(ctx context.Context, token string) (*keystone.TokenInfo, error) {
	f.calls.Add(1)
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errors.New("validating token: dial tcp 127.0.0.1:5000: connection refused")
	}
	info, ok := f.tokens[token]
	if !ok {
		return nil, fmt.Errorf("%w (404)", keystone.ErrInvalidToken)
	}
	return info, nil
}

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestCacheTTL(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ttl       time.Duration
		expiresIn time.Duration
		fresh     time.Duration // still cached after this long
		stale     time.Duration // asked again after this long
	}{
		{"cache time first", 300 * time.Second, time.Hour, 299 * time.Second, 300 * time.Second},
		{"token expiry first", 300 * time.Second, 60 * time.Second, 59 * time.Second, 60 * time.Second},
		{"no expiry", 300 * time.Second, 0, 299 * time.Second, 301 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{now: t0}
			info := &keystone.TokenInfo{UserID: "u1", ProjectID: "p1", Roles: []string{"member"}}
			if tc.expiresIn > 0 {
				info.ExpiresAt = t0.Add(tc.expiresIn)
			}
			f := &fakeValidator{tokens: map[string]*keystone.TokenInfo{"tok": info}}
			c := NewCache(f, CacheOptions{TTL: tc.ttl, Size: 10, Now: clk.Now})
			ctx := context.Background()
			for range 3 {
				got, err := c.Validate(ctx, "tok")
				if err != nil || got.UserID != "u1" {
					t.Fatalf("Validate = %v, %v", got, err)
				}
			}
			if n := f.calls.Load(); n != 1 {
				t.Fatalf("%d validator calls, want 1 (cache hits)", n)
			}
			clk.Add(tc.fresh)
			if _, err := c.Validate(ctx, "tok"); err != nil || f.calls.Load() != 1 {
				t.Fatalf("after %v: err %v, %d calls, want still cached", tc.fresh, err, f.calls.Load())
			}
			clk.Add(tc.stale - tc.fresh)
			_, err := c.Validate(ctx, "tok")
			if f.calls.Load() != 2 {
				t.Fatalf("after %v: %d calls, want the entry expired", tc.stale, f.calls.Load())
			}
			// An answer whose token has expired by now is not accepted.
			if tc.expiresIn > 0 && tc.stale >= tc.expiresIn && !errors.Is(err, keystone.ErrInvalidToken) {
				t.Errorf("expired token: err = %v", err)
			}
		})
	}
}

func TestCacheDisabled(t *testing.T) {
	f := &fakeValidator{tokens: map[string]*keystone.TokenInfo{"tok": {UserID: "u1"}}}
	c := NewCache(f, CacheOptions{TTL: 0})
	for range 3 {
		if _, err := c.Validate(context.Background(), "tok"); err != nil {
			t.Fatal(err)
		}
		_, _ = c.Validate(context.Background(), "bad")
	}
	if n := f.calls.Load(); n != 6 || c.Len() != 0 {
		t.Errorf("%d calls and %d entries, want 6 and 0 with token_cache_time 0", n, c.Len())
	}
}

func TestCacheSizeBound(t *testing.T) {
	f := &fakeValidator{tokens: map[string]*keystone.TokenInfo{}}
	for i := range 10 {
		f.tokens[fmt.Sprint("tok", i)] = &keystone.TokenInfo{UserID: fmt.Sprint("u", i)}
	}
	c := NewCache(f, CacheOptions{TTL: time.Hour, Size: 3})
	ctx := context.Background()
	for i := range 10 {
		if _, err := c.Validate(ctx, fmt.Sprint("tok", i)); err != nil {
			t.Fatal(err)
		}
		if c.Len() > 3 {
			t.Fatalf("%d entries, bound is 3", c.Len())
		}
	}
	// tok7, tok8, tok9 remain; using tok7 makes tok8 the oldest.
	calls := f.calls.Load()
	if _, err := c.Validate(ctx, "tok7"); err != nil || f.calls.Load() != calls {
		t.Fatalf("tok7 not cached: %v", err)
	}
	if _, err := c.Validate(ctx, "tok0"); err != nil || f.calls.Load() != calls+1 {
		t.Fatalf("tok0 should have been evicted: %v", err)
	}
	if _, err := c.Validate(ctx, "tok7"); err != nil || f.calls.Load() != calls+1 {
		t.Fatal("tok7, recently used, was evicted")
	}
	if _, err := c.Validate(ctx, "tok8"); err != nil || f.calls.Load() != calls+2 {
		t.Fatal("tok8, least recently used, was not evicted")
	}
}

func TestCacheNegative(t *testing.T) {
	clk := &clock{now: t0}
	f := &fakeValidator{tokens: map[string]*keystone.TokenInfo{}}
	c := NewCache(f, CacheOptions{TTL: time.Hour, Now: clk.Now})
	ctx := context.Background()
	for range 5 {
		if _, err := c.Validate(ctx, "garbage"); !errors.Is(err, keystone.ErrInvalidToken) {
			t.Fatalf("err = %v", err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d calls for an invalid token, want 1", n)
	}
	clk.Add(DefaultNegativeTTL)
	if _, err := c.Validate(ctx, "garbage"); !errors.Is(err, keystone.ErrInvalidToken) || f.calls.Load() != 2 {
		t.Fatalf("negative entry outlived %v: err %v, %d calls", DefaultNegativeTTL, err, f.calls.Load())
	}
	if _, err := c.Validate(ctx, ""); !errors.Is(err, keystone.ErrInvalidToken) || f.calls.Load() != 2 {
		t.Error("empty token reached the validator")
	}
}

// Keystone unreachable: the error is returned, not cached.
func TestCacheUnreachableNotCached(t *testing.T) {
	f := &fakeValidator{down: true, tokens: map[string]*keystone.TokenInfo{"tok": {UserID: "u1"}}}
	c := NewCache(f, CacheOptions{TTL: time.Hour})
	ctx := context.Background()
	_, err := c.Validate(ctx, "tok")
	if err == nil || errors.Is(err, keystone.ErrInvalidToken) {
		t.Fatalf("err = %v, want an error that is not ErrInvalidToken", err)
	}
	f.mu.Lock()
	f.down = false
	f.mu.Unlock()
	if _, err := c.Validate(ctx, "tok"); err != nil || f.calls.Load() != 2 {
		t.Fatalf("after recovery: %v, %d calls", err, f.calls.Load())
	}
}

func TestCacheSingleflight(t *testing.T) {
	const n = 50
	f := &fakeValidator{
		tokens:  map[string]*keystone.TokenInfo{"tok": {UserID: "u1"}},
		block:   make(chan struct{}),
		entered: make(chan struct{}, n),
	}
	c := NewCache(f, CacheOptions{TTL: time.Hour})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			info, err := c.Validate(context.Background(), "tok")
			if err == nil && info.UserID != "u1" {
				err = fmt.Errorf("user %q", info.UserID)
			}
			errs <- err
		})
	}
	<-f.entered // one call is in flight; let the others pile up behind it
	time.Sleep(50 * time.Millisecond)
	close(f.block)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("%d validator calls for %d concurrent requests, want 1", got, n)
	}
}

// A caller that gives up does not fail the others sharing its call.
func TestCacheCallerCancel(t *testing.T) {
	f := &fakeValidator{
		tokens:  map[string]*keystone.TokenInfo{"tok": {UserID: "u1"}},
		block:   make(chan struct{}),
		entered: make(chan struct{}, 2),
	}
	c := NewCache(f, CacheOptions{TTL: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.Validate(ctx, "tok")
		first <- err
	}()
	<-f.entered
	second := make(chan error, 1)
	go func() {
		_, err := c.Validate(context.Background(), "tok")
		second <- err
	}()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v", err)
	}
	close(f.block)
	if err := <-second; err != nil {
		t.Errorf("second caller: %v", err)
	}
}

// hangingValidator never answers until its context ends.
type hangingValidator struct {
	fast map[string]*keystone.TokenInfo
}

func (h hangingValidator) Validate(ctx context.Context, token string) (*keystone.TokenInfo, error) {
	if info, ok := h.fast[token]; ok {
		return info, nil
	}
	<-ctx.Done()
	return nil, fmt.Errorf("validating token: %w", ctx.Err())
}

// A Keystone that does not answer costs a caller at most the timeout (an
// error that is not ErrInvalidToken: 503), and holds no lock that would
// stop other tokens from being validated meanwhile.
func TestCacheTimeoutAndNoLockAcrossIO(t *testing.T) {
	good := &keystone.TokenInfo{UserID: "u", ExpiresAt: time.Now().Add(time.Hour)}
	c := NewCache(hangingValidator{fast: map[string]*keystone.TokenInfo{"good": good}}, CacheOptions{TTL: time.Minute, Timeout: 200 * time.Millisecond})
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := c.Validate(context.Background(), "hangs")
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	// Meanwhile another token is validated at once.
	if info, err := c.Validate(context.Background(), "good"); err != nil || info.UserID != "u" {
		t.Fatalf("another token while one hangs: %v %v", info, err)
	}
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("another token waited %v for the hanging one", d)
	}
	err := <-errc
	if err == nil || errors.Is(err, keystone.ErrInvalidToken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging validation: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("hanging validation took %v", d)
	}
}
