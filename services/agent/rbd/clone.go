package rbd

import (
	"context"
	"errors"
	"fmt"
	"time"

	cephrbd "github.com/ceph/go-ceph/rbd"
)

// Clones, snapshot protection and the RBD trash: what replication drills
// (a clone of a retained point) and the clean-up of a replication need.

// featureLayering is the RBD feature a clone needs.
const featureLayering = 1 << 0

// Clone creates clonePool/cloneName as a clone of pool/image@snap, with the
// parent's object order and features (plus layering, which a clone
// needs). The snapshot must be protected unless the cluster makes v2
// clones.
func (c *Cluster) Clone(ctx context.Context, pool, image, snap, clonePool, cloneName string) error {
	parent, err := c.OpenImage(ctx, pool, image, snap, true)
	if err != nil {
		return err
	}
	defer parent.Close()
	info, err := parent.Info()
	if err != nil {
		return err
	}
	dst, err := c.ioctx(clonePool)
	if err != nil {
		return err
	}
	defer dst.Destroy()
	opts := cephrbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(cephrbd.ImageOptionOrder, info.Order); err != nil {
		return translate(err, "image option order")
	}
	if err := opts.SetUint64(cephrbd.ImageOptionFeatures, info.Features|featureLayering); err != nil {
		return translate(err, "image option features")
	}
	what := fmt.Sprintf("cloning %s/%s@%s to %s/%s", pool, image, snap, clonePool, cloneName)
	return translate(cephrbd.CloneImage(parent.io, image, snap, dst, cloneName, opts), what)
}

// ProtectSnapshot protects snapshot name (a v1 clone's parent must be).
func (i *Image) ProtectSnapshot(name string) error {
	return translate(i.img.GetSnapshot(name).Protect(), "protecting snapshot "+i.String()+"@"+name)
}

// UnprotectSnapshot unprotects snapshot name (ErrBusy while it has clone
// children).
func (i *Image) UnprotectSnapshot(name string) error {
	return translate(i.img.GetSnapshot(name).Unprotect(), "unprotecting snapshot "+i.String()+"@"+name)
}

// SnapshotProtected reports whether snapshot name is protected.
func (i *Image) SnapshotProtected(name string) (bool, error) {
	p, err := i.img.GetSnapshot(name).IsProtected()
	return p, translate(err, "protection of snapshot "+i.String()+"@"+name)
}

// SnapshotTime is when the snapshot of id snapID was taken (an id from
// Snapshots: librbd may abort on an unknown one).
func (i *Image) SnapshotTime(snapID uint64) (time.Time, error) {
	ts, err := i.img.GetSnapTimestamp(snapID)
	if err != nil {
		return time.Time{}, translate(err, fmt.Sprintf("timestamp of snapshot %d of %s", snapID, i))
	}
	return time.Unix(ts.Sec, ts.Nsec).UTC(), nil
}

// Flatten copies the parent's data into the clone and detaches it. An
// image without a parent is no error (librbd answers EINVAL: checked first).
func (i *Image) Flatten() error {
	if p, err := i.Parent(); err != nil {
		return err
	} else if p == nil {
		return nil
	}
	return translate(i.img.Flatten(), "flattening "+i.String())
}

// ParentRef names a clone's parent snapshot.
type ParentRef struct {
	Pool, Image, ImageID string
	Snap                 string
	SnapID               uint64
}

// Parent is the clone's parent, nil for an image that is not a clone (or
// was flattened).
func (i *Image) Parent() (*ParentRef, error) {
	p, err := i.img.GetParent()
	if err != nil {
		err = translate(err, "parent of "+i.String())
		if isNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	if p == nil || p.Image.ImageName == "" {
		return nil, nil
	}
	return &ParentRef{Pool: p.Image.PoolName, Image: p.Image.ImageName, ImageID: p.Image.ImageID,
		Snap: p.Snap.SnapName, SnapID: p.Snap.ID}, nil
}

// Child is a clone of a snapshot.
type Child struct {
	Pool, Image, ID string
	// Trash: the clone is in the RBD trash (it still holds the parent).
	Trash bool
}

// Children lists the clones of the snapshot the image was opened at.
func (i *Image) Children() ([]Child, error) {
	specs, err := i.img.ListChildrenAttributes()
	if err != nil {
		return nil, translate(err, "children of "+i.String())
	}
	out := make([]Child, 0, len(specs))
	for _, s := range specs {
		out = append(out, Child{Pool: s.PoolName, Image: s.ImageName, ID: s.ImageID, Trash: s.Trash})
	}
	return out, nil
}

// SnapshotChildren lists the clones of pool/image@snap.
func (c *Cluster) SnapshotChildren(ctx context.Context, pool, image, snap string) ([]Child, error) {
	img, err := c.OpenImage(ctx, pool, image, snap, true)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return img.Children()
}

// OpenImageByID opens the image of id in pool (also one in the trash), at
// snapshot snap when not empty (read-only then).
func (c *Cluster) OpenImageByID(ctx context.Context, pool, id, snap string, readOnly bool) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	var img *cephrbd.Image
	if readOnly || snap != "" {
		img, err = cephrbd.OpenImageByIdReadOnly(io, id, snapOrNone(snap))
	} else {
		img, err = cephrbd.OpenImageById(io, id, cephrbd.NoSnapshot)
	}
	if err != nil {
		io.Destroy()
		return nil, translate(err, "opening image id "+id+" in pool "+pool)
	}
	return &Image{img: img, io: io, pool: pool, name: "id:" + id}, nil
}

// TrashEntry is an image in the RBD trash.
type TrashEntry struct {
	ID, Name string
	// DeferredUntil: before it, the image may only be removed with force.
	DeletedAt, DeferredUntil time.Time
}

// TrashLookup lists the images of pool in the trash whose original name
// is name (none is no error).
func (c *Cluster) TrashLookup(ctx context.Context, pool, name string) ([]TrashEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	defer io.Destroy()
	list, err := cephrbd.GetTrashList(io)
	if err != nil {
		return nil, translate(err, "listing the trash of "+pool)
	}
	var out []TrashEntry
	for _, e := range list {
		if e.Name == name {
			out = append(out, TrashEntry{ID: e.Id, Name: e.Name, DeletedAt: e.DeletionTime, DeferredUntil: e.DefermentEndTime})
		}
	}
	return out, nil
}

// TrashMove moves pool/name to the trash (what Cinder does to a volume
// with snapshots), removable at once.
func (c *Cluster) TrashMove(ctx context.Context, pool, name string) error {
	img, err := c.OpenImage(ctx, pool, name, "", false)
	if err != nil {
		return err
	}
	err = img.img.Trash(0)
	img.Close()
	return translate(err, "moving "+pool+"/"+name+" to the trash")
}

// TrashRemove removes the image of id from pool's trash (it must have no
// snapshots; before its deferment ends the trash refuses, ErrPermission).
func (c *Cluster) TrashRemove(ctx context.Context, pool, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	return translate(cephrbd.TrashRemove(io, id, false), "removing image id "+id+" from the trash of "+pool)
}

func isNotFound(err error) bool {
	return err != nil && errors.Is(err, ErrNotFound)
}

// SnapshotChildren lists the clones of the image's snapshot name.
func (i *Image) SnapshotChildren(name string) ([]Child, error) {
	id, err := i.img.GetId()
	if err != nil {
		return nil, translate(err, "id of "+i.String())
	}
	at, err := cephrbd.OpenImageByIdReadOnly(i.io, id, name)
	if err != nil {
		return nil, translate(err, "opening "+i.String()+"@"+name)
	}
	defer at.Close()
	c := &Image{img: at, io: i.io, pool: i.pool, name: i.name + "@" + name}
	return c.Children()
}
