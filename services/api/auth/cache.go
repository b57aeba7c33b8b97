package auth

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
)

// DefaultNegativeTTL is how long an invalid token is remembered as invalid.
const DefaultNegativeTTL = 10 * time.Second

// DefaultValidateTimeout bounds one shared Keystone call when
// CacheOptions.Timeout is zero. The call runs detached from the callers'
// contexts, so one caller giving up does not fail the others.
const DefaultValidateTimeout = 10 * time.Second

// CacheOptions configure a Cache.
type CacheOptions struct {
	// TTL is how long a valid token is kept (token_cache_time), never longer
	// than the token's expiry. Zero disables caching (calls still collapse).
	TTL time.Duration
	// Size bounds the number of entries (token_cache_size); the least
	// recently used entry goes first. Zero or less means 10000.
	Size int
	// NegativeTTL is how long an invalid token is remembered; zero means
	// DefaultNegativeTTL.
	NegativeTTL time.Duration
	// Timeout bounds one validation (http_request_timeout); zero means
	// DefaultValidateTimeout.
	Timeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// CacheOptionsFrom reads token_cache_time and token_cache_size.
func CacheOptionsFrom(k config.KeystoneAuthtoken) CacheOptions {
	return CacheOptions{TTL: time.Duration(k.TokenCacheTime) * time.Second, Size: k.TokenCacheSize,
		Timeout: time.Duration(k.HTTPRequestTimeout) * time.Second}
}

// Cache is a TokenValidator that remembers another's answers, keyed by the
// SHA-256 of the token (the token itself is never kept). Concurrent
// validations of one token make a single call.
type Cache struct {
	v     TokenValidator
	opts  CacheOptions
	group singleflight.Group

	mu      sync.Mutex
	entries map[[sha256.Size]byte]*list.Element
	lru     *list.List // front: most recently used
}

type cacheEntry struct {
	key     [sha256.Size]byte
	info    *keystone.TokenInfo // nil: the token is invalid
	expires time.Time
}

// NewCache wraps v.
func NewCache(v TokenValidator, o CacheOptions) *Cache {
	if o.Size <= 0 {
		o.Size = 10000
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = DefaultNegativeTTL
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultValidateTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Cache{v: v, opts: o, entries: map[[sha256.Size]byte]*list.Element{}, lru: list.New()}
}

// errCachedInvalid is returned for a token remembered as invalid.
var errCachedInvalid = fmt.Errorf("%w (cached)", keystone.ErrInvalidToken)

// Validate returns the cached answer for token or asks the wrapped
// validator. The TokenInfo returned is shared: callers must not modify it.
func (c *Cache) Validate(ctx context.Context, token string) (*keystone.TokenInfo, error) {
	if token == "" {
		return nil, keystone.ErrInvalidToken
	}
	key := sha256.Sum256([]byte(token))
	if info, ok := c.get(key); ok {
		if info == nil {
			return nil, errCachedInvalid
		}
		return info, nil
	}
	ch := c.group.DoChan(string(key[:]), func() (any, error) {
		// Another flight may have filled the entry meanwhile.
		if info, ok := c.get(key); ok {
			if info == nil {
				return nil, errCachedInvalid
			}
			return info, nil
		}
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.Timeout)
		defer cancel()
		info, err := c.v.Validate(vctx, token)
		switch {
		case errors.Is(err, keystone.ErrInvalidToken):
			c.put(key, nil, c.opts.Now().Add(c.opts.NegativeTTL))
			return nil, err
		case err != nil:
			return nil, err // Keystone did not answer: nothing to remember
		}
		now := c.opts.Now()
		if !info.ExpiresAt.IsZero() && !now.Before(info.ExpiresAt) {
			return nil, keystone.ErrInvalidToken
		}
		expires := now.Add(c.opts.TTL)
		if !info.ExpiresAt.IsZero() && info.ExpiresAt.Before(expires) {
			expires = info.ExpiresAt
		}
		c.put(key, info, expires)
		return info, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*keystone.TokenInfo), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Len returns the number of entries, expired ones included.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// get returns the entry for key; ok is false when there is none or it
// expired. A nil info with ok means the token is known invalid.
func (c *Cache) get(key [sha256.Size]byte) (info *keystone.TokenInfo, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, found := c.entries[key]
	if !found {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !c.opts.Now().Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, key)
		return nil, false
	}
	c.lru.MoveToFront(el)
	return e.info, true
}

func (c *Cache) put(key [sha256.Size]byte, info *keystone.TokenInfo, expires time.Time) {
	if c.opts.TTL <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, found := c.entries[key]; found {
		e := el.Value.(*cacheEntry)
		e.info, e.expires = info, expires
		c.lru.MoveToFront(el)
		return
	}
	c.entries[key] = c.lru.PushFront(&cacheEntry{key: key, info: info, expires: expires})
	for c.lru.Len() > c.opts.Size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*cacheEntry).key)
	}
}
