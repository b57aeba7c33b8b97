//go:build functional

package rbd

import (
	"context"
	"errors"
	"os/exec"
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

// A connection the cluster blocklists fails with ErrBlocklisted (which
// CheckBlocklisted finds, though the monitors still answer it); Reset
// replaces it for the next Acquire and closes it once its last user is
// done.
func TestPoolResetAfterBlocklist(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conf := testenv.Get(t, "CEPH_REGIONONE_CONF")
	pool := testenv.Get(t, "CEPH_POOL")
	o := Options{ConfFile: conf, User: testenv.Get(t, "CEPH_USER"), Keyring: testenv.Get(t, "CEPH_REGIONONE_KEYRING"), Timeout: 10 * time.Second}
	p := NewPool(time.Minute)
	defer p.Close()
	c, rel, err := p.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckBlocklisted(ctx, pool); err != nil {
		t.Fatalf("a fresh connection: %v", err)
	}
	addr, err := c.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ceph", "-c", conf, "osd", "blocklist", "add", addr).CombinedOutput()
	if err != nil {
		t.Fatalf("ceph osd blocklist add %s: %v %s", addr, err, out)
	}
	t.Cleanup(func() { exec.Command("ceph", "-c", conf, "osd", "blocklist", "rm", addr).Run() })
	var berr error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if berr = c.CheckBlocklisted(ctx, pool); berr != nil {
			break
		}
	}
	if !errors.Is(berr, ErrBlocklisted) {
		t.Fatalf("a blocklisted connection's probe: %v", berr)
	}
	if _, err := c.Health(ctx); err != nil {
		t.Logf("health on a blocklisted connection: %v", err)
	}
	p.Reset(o)
	c2, rel2, err := p.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer rel2()
	if c2 == c {
		t.Fatal("Reset kept the blocklisted connection")
	}
	if err := c2.CheckBlocklisted(ctx, pool); err != nil {
		t.Errorf("the new connection: %v", err)
	}
	if err := c.CheckPool(ctx, pool); errors.Is(err, ErrClosed) {
		t.Error("the old connection was closed while still held")
	}
	rel()
	time.Sleep(time.Second)
	if err := c.CheckPool(ctx, pool); !errors.Is(err, ErrClosed) {
		t.Errorf("the replaced connection after its last release: %v", err)
	}
}
