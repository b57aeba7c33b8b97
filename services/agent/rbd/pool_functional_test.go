//go:build functional

package rbd

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// One connection per cluster and user, shared by concurrent operations and
// closed once idle.
func TestPoolSharesAndClosesIdle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := Options{ConfFile: testenv.Get(t, "CEPH_REGIONONE_CONF"), User: testenv.Get(t, "CEPH_USER"), Keyring: testenv.Get(t, "CEPH_REGIONONE_KEYRING")}
	p := NewPool(300 * time.Millisecond)
	defer p.Close()

	var wg sync.WaitGroup
	got := make([]*Cluster, 8)
	rels := make([]func(), 8)
	for i := range got {
		wg.Go(func() {
			c, rel, err := p.Acquire(ctx, o)
			if err != nil {
				t.Error(err)
				return
			}
			got[i], rels[i] = c, rel
		})
	}
	wg.Wait()
	for _, c := range got[1:] {
		if c != got[0] {
			t.Fatal("concurrent acquires got different connections")
		}
	}
	if n := p.Open(); n != 1 {
		t.Errorf("%d connections open, want 1", n)
	}
	first := got[0]
	for _, r := range rels[:7] {
		r()
	}
	time.Sleep(600 * time.Millisecond)
	if err := first.CheckPool(ctx, testenv.Get(t, "CEPH_POOL")); err != nil {
		t.Errorf("connection closed while still held: %v", err)
	}
	rels[7]()
	rels[7]() // a second release is harmless
	time.Sleep(600 * time.Millisecond)
	if n := p.Open(); n != 0 {
		t.Errorf("%d connections open after idle time", n)
	}
	if err := first.CheckPool(ctx, testenv.Get(t, "CEPH_POOL")); !errors.Is(err, ErrClosed) {
		t.Errorf("idle connection not closed: %v", err)
	}
	c, rel, err := p.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if c == first {
		t.Error("got the closed connection back")
	}
	if err := c.CheckPool(ctx, testenv.Get(t, "CEPH_POOL")); err != nil {
		t.Error(err)
	}
	rel()

	bad := o
	bad.Keyring = testenv.Get(t, "CEPH_REGIONTWO_KEYRING")
	bad.Timeout = 5 * time.Second
	if _, _, err := p.Acquire(ctx, bad); !errors.Is(err, ErrPermission) {
		t.Errorf("wrong key: %v", err)
	}
	p.Close()
	if _, _, err := p.Acquire(ctx, o); !errors.Is(err, ErrClosed) {
		t.Errorf("acquire after Close: %v", err)
	}
}
