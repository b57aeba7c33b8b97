//go:build functional

package rbd

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Clone, protection, children, flatten and snapshot times on a real
// cluster: a clone of a protected snapshot keeps the parent's order and
// features, is listed as its child (the snapshot cannot be unprotected
// meanwhile), reads the parent's data, and once flattened has no parent and
// the snapshot none as child.
func TestCloneProtectFlatten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := connectRegion(t, ctx, "REGIONTWO")
	pool := testenv.Get(t, "CEPH_POOL")
	conf := testenv.Get(t, "CEPH_REGIONTWO_CONF")
	name := fmt.Sprintf("functional-clone-%d", time.Now().UnixNano())
	clone := name + "-c"
	t.Cleanup(func() {
		exec.Command("rbd", "-c", conf, "rm", pool+"/"+clone).Run()
		exec.Command("rbd", "-c", conf, "snap", "unprotect", pool+"/"+name+"@s").Run()
		exec.Command("rbd", "-c", conf, "snap", "purge", pool+"/"+name).Run()
		exec.Command("rbd", "-c", conf, "rm", pool+"/"+name).Run()
	})
	const features = 1<<0 | 1<<2 // layering, exclusive-lock
	if err := c.CreateImage(ctx, pool, name, ImageSpec{Size: 8 << 20, Order: 21, Features: features}); err != nil {
		t.Fatal(err)
	}
	img, err := c.OpenImage(ctx, pool, name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	data := []byte("the point's data")
	if _, err := img.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-2 * time.Second)
	if err := img.CreateSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	snaps, _ := img.Snapshots()
	at, err := img.SnapshotTime(snaps[0].ID)
	if err != nil || at.Before(before) || at.After(time.Now().Add(2*time.Second)) {
		t.Errorf("snapshot time %v (%v), taken after %v", at, err, before)
	}
	if p, err := img.SnapshotProtected("s"); err != nil || p {
		t.Fatalf("protected before protect: %v %v", p, err)
	}
	if err := img.ProtectSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	if p, err := img.SnapshotProtected("s"); err != nil || !p {
		t.Fatalf("not protected after protect: %v %v", p, err)
	}
	if err := c.Clone(ctx, pool, name, "s", pool, clone); err != nil {
		t.Fatal(err)
	}
	if err := c.Clone(ctx, pool, name, "s", pool, clone); !errors.Is(err, ErrExists) {
		t.Errorf("second clone: %v, want ErrExists", err)
	}
	kids, err := img.SnapshotChildren("s")
	if err != nil || len(kids) != 1 || kids[0].Image != clone || kids[0].Pool != pool || kids[0].ID == "" || kids[0].Trash {
		t.Fatalf("children %+v, %v", kids, err)
	}
	if err := img.UnprotectSnapshot("s"); !errors.Is(err, ErrBusy) {
		t.Errorf("unprotect with a child: %v, want ErrBusy", err)
	}
	ci, err := c.OpenImageByID(ctx, pool, kids[0].ID, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Close()
	info, err := ci.Info()
	if err != nil || info.Order != 21 || info.Features&features != features || info.Parent != pool+"/"+name+"@s" {
		t.Errorf("clone info %+v, %v", info, err)
	}
	p, err := ci.Parent()
	if err != nil || p == nil || p.Pool != pool || p.Image != name || p.Snap != "s" || p.SnapID != snaps[0].ID {
		t.Errorf("parent %+v, %v", p, err)
	}
	got := make([]byte, len(data))
	if _, err := ci.ReadAt(got, 1<<20); err != nil || string(got) != string(data) {
		t.Errorf("clone reads %q (%v)", got, err)
	}
	if err := ci.Flatten(); err != nil {
		t.Fatal(err)
	}
	if p, err := ci.Parent(); err != nil || p != nil {
		t.Errorf("parent after flatten %+v, %v", p, err)
	}
	if err := ci.Flatten(); err != nil {
		t.Errorf("flatten of a flattened image: %v", err)
	}
	if kids, err := img.SnapshotChildren("s"); err != nil || len(kids) != 0 {
		t.Errorf("children after flatten %+v, %v", kids, err)
	}
	if _, err := ci.ReadAt(got, 1<<20); err != nil || string(got) != string(data) {
		t.Errorf("flattened clone reads %q (%v)", got, err)
	}
	if err := img.UnprotectSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	if err := img.RemoveSnapshot("s"); err != nil {
		t.Fatal(err)
	}
}

// An image moved to the trash is found by its name, opened by id (its
// snapshots still there), and removed from the trash once it has none.
func TestTrashLookupAndRemove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connectRegion(t, ctx, "REGIONONE")
	pool := testenv.Get(t, "CEPH_POOL")
	conf := testenv.Get(t, "CEPH_REGIONONE_CONF")
	name := fmt.Sprintf("functional-trash-%d", time.Now().UnixNano())
	if err := c.CreateImage(ctx, pool, name, ImageSpec{Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	var id string
	t.Cleanup(func() {
		exec.Command("rbd", "-c", conf, "snap", "purge", pool+"/"+name).Run()
		exec.Command("rbd", "-c", conf, "rm", pool+"/"+name).Run()
		if id != "" {
			exec.Command("rbd", "-c", conf, "snap", "purge", "--image-id", id, "-p", pool).Run()
			exec.Command("rbd", "-c", conf, "trash", "rm", "--force", pool+"/"+id).Run()
		}
	})
	img, err := c.OpenImage(ctx, pool, name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.CreateSnapshot("keep"); err != nil {
		t.Fatal(err)
	}
	info, _ := img.Info()
	img.Close()
	if got, err := c.TrashLookup(ctx, pool, name); err != nil || len(got) != 0 {
		t.Fatalf("trash before: %+v, %v", got, err)
	}
	if out, err := exec.Command("rbd", "-c", conf, "trash", "mv", pool+"/"+name).CombinedOutput(); err != nil {
		t.Fatalf("rbd trash mv: %v: %s", err, out)
	}
	id = info.ID
	got, err := c.TrashLookup(ctx, pool, name)
	if err != nil || len(got) != 1 || got[0].ID != info.ID || got[0].Name != name {
		t.Fatalf("trash lookup %+v, %v (id %s)", got, err, info.ID)
	}
	if _, err := c.OpenImage(ctx, pool, name, "", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("open by name of a trashed image: %v", err)
	}
	if err := c.TrashRemove(ctx, pool, id); err == nil {
		t.Fatal("a trashed image with a snapshot was removed")
	}
	ti, err := c.OpenImageByID(ctx, pool, id, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := ti.Snapshots(); err != nil || len(s) != 1 || s[0].Name != "keep" {
		t.Errorf("trashed image snapshots %+v, %v", s, err)
	}
	if err := ti.RemoveSnapshot("keep"); err != nil {
		t.Fatal(err)
	}
	ti.Close()
	if err := c.TrashRemove(ctx, pool, id); err != nil {
		t.Fatal(err)
	}
	if got, err := c.TrashLookup(ctx, pool, name); err != nil || len(got) != 0 {
		t.Errorf("trash after remove: %+v, %v", got, err)
	}
	id = ""
}
