package rbd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	cephrbd "github.com/ceph/go-ceph/rbd"
)

// Consistent snapshots: one user-namespace snapshot on each of several
// images, each under its own name (a group cycle names each member's
// ferry-<that member's transfer id>), taken at one point in time
// (crash-consistent: the set holds a write only if it holds every write
// that completed before that write was issued), across pools too. It is
// what a consistency group's replication cycle diffs (issue 12).
//
// How: open every image, take every exclusive lock (rbd_lock_acquire: the
// writers' librbd hands the lock over once its in-flight writes are done;
// all requested together), create the snapshots (together) while all
// locks are held, release. A writer cannot get a lock back before the release, so no write
// lands in some snapshots and not in others.
//
// What writers see, measured on the stack's Ceph 16.2.15 (3 images in two
// pools, a writer going round them with its own librbd handles): librbd's
// manual lock (the StandardPolicy) refuses the writers' lock requests with
// EROFS, so a write issued while the locks are held FAILS with EROFS; it
// is not queued. The hold (lock requests to release) lasted 65-180 ms per
// snapshot, during which the writer, retrying every millisecond, had 6-42
// writes refused (a whole call: 160-290 ms). The markers are written
// before the hold, so the snapshots are the only work inside it. A QEMU
// guest whose disk is one of the images gets an I/O error for such a
// write. So this is for images that are detached or whose writers are
// stopped or retry (Ferry's own), not for attached volumes of running
// instances.
//
// Why not RBD group snapshots, which quiesce properly: rbd_group_snap_create
// blocks its own lock's requests with EBUSY, so writers retry and their
// writes wait (measured: 60-130 ms per group snapshot of 3 images in two
// pools, writers delayed up to 90 ms, no errors; a group may hold images of
// other pools). But each image's part of a group snapshot lives in the
// group snapshot namespace under a generated name
// (.group.<pool id>_<group id>_<group snap id>), and on Ceph 16
//   - rbd_diff_iterate2 resolves fromsnapname in the user namespace only:
//     ENOENT for that name, so it can never be a cycle's diff base;
//   - rbd_diff_iterate3 (base by snapshot id) is absent (Ceph 19); go-ceph's
//     DiffIterateByID answers ErrNotImplemented;
//   - opening the image at that name, renaming or removing it by name:
//     ENOENT (only rbd_snap_set_by_id reaches it: a group snapshot can be
//     read, and be the end of a diff from a user snapshot, not its start);
//   - rbd_group_snap_get_info (the group snapshot's image snapshot ids) is
//     absent (Ceph 18): the parts are found by rbd_snap_get_group_namespace;
//   - an image is in at most one group (adding it to a second: EEXIST), so
//     a Cinder group using RBD groups and Ferry's would collide.
//
// A cycle built on group snapshots would need a base it can diff from;
// on Ceph 16 only user snapshots are that, and a user snapshot cannot be
// made from a group snapshot. So a group snapshot is not used, for images
// of one pool either.
//
// Idempotency: before the snapshots, each image gets the image-meta key
// ferry.consistent.<its snap> = the group (its members' pool/image
// id@snap, sorted). A repeat whose images all have their snapshot with
// that marker answers those snapshots; an image that has its snapshot's
// name with another marker or none is ErrExists (it is not this group's).
// Snapshots of this group on only some images (a call that died mid-way)
// are removed and the set retaken. RemoveConsistent removes snapshots and
// markers.

// ErrUnsupported is an image that lacks what an operation needs (a
// consistent snapshot needs the exclusive-lock feature).
var ErrUnsupported = errors.New("not supported")

// ImageRef names an image.
type ImageRef struct{ Pool, Name string }

// String is pool/name.
func (r ImageRef) String() string { return r.Pool + "/" + r.Name }

// ImageSnap is one image of a consistent snapshot and the name of its
// snapshot there.
type ImageSnap struct {
	Image ImageRef
	Snap  string
}

// String is pool/name@snap.
func (s ImageSnap) String() string { return s.Image.String() + "@" + s.Snap }

// beforeConsistentSnapshot runs before each snapshot of a consistent
// snapshot, during the hold; tests make it fail.
var beforeConsistentSnapshot = func(ImageRef) error { return nil }

// consistentHeld is told how long each successful hold lasted; tests
// measure it.
var consistentHeld = func(time.Duration) {}

// ConsistentKey is the image-meta key marking snap as a consistent
// snapshot and naming its group: whoever removes such a snapshot otherwise
// than by RemoveConsistent removes the key too.
func ConsistentKey(snap string) string { return "ferry.consistent." + snap }

// groupMember is one open image of a consistent snapshot.
type groupMember struct {
	ref     ImageRef
	name    string // its snapshot's name
	img     *Image
	has     bool   // the snapshot exists
	marker  string // the marker's value, "" when none
	snap    Snapshot
	marked  bool // this call wrote the marker
	created bool // this call created the snapshot
	locked  bool
}

// SnapshotConsistent gives each image of snaps a user-namespace snapshot
// of its name, all taken at one point in time (see "Consistent snapshots"
// above for how, and what writers see). The answer is in the order of
// snaps. It is all or nothing: on failure the snapshots made by this call
// are removed. Every image needs the exclusive-lock feature
// (ErrUnsupported); an image may be listed once.
//
// check, when not nil, is given every image (open for writing, in the
// order of snaps) once all were read, before anything is changed (a
// repeat's answer included): its error ends the call, nothing changed. A
// caller checks there what must hold at the moment the set is judged (a
// marker that whoever removes one of the snapshots leaves first).
//
// ctx is checked between steps; each librbd call is bounded by the Ceph op
// timeouts.
func (c *Cluster) SnapshotConsistent(ctx context.Context, snaps []ImageSnap, check func([]*Image) error) (_ []Snapshot, err error) {
	if len(snaps) == 0 {
		return nil, errors.New("consistent snapshot: no images")
	}
	ordered := slices.Clone(snaps)
	slices.SortFunc(ordered, func(a, b ImageSnap) int { return strings.Compare(a.Image.String(), b.Image.String()) })
	for i, s := range ordered {
		if s.Snap == "" {
			return nil, fmt.Errorf("consistent snapshot: no snapshot name for %s", s.Image)
		}
		if i > 0 && s.Image == ordered[i-1].Image {
			return nil, fmt.Errorf("consistent snapshot: %s listed twice", s.Image)
		}
	}
	members := make([]*groupMember, len(ordered))
	defer func() {
		for _, m := range members {
			if m != nil {
				m.img.Close() // releases a lock still held
			}
		}
	}()
	ids := make([]string, len(ordered))
	for i, s := range ordered {
		img, err := c.OpenImage(ctx, s.Image.Pool, s.Image.Name, "", false)
		if err != nil {
			return nil, err
		}
		m := &groupMember{ref: s.Image, name: s.Snap, img: img}
		members[i] = m
		info, err := img.Info()
		if err != nil {
			return nil, err
		}
		if info.Features&cephrbd.FeatureExclusiveLock == 0 {
			return nil, fmt.Errorf("consistent snapshot of %s: the exclusive-lock feature is off: %w", s.Image, ErrUnsupported)
		}
		ids[i] = s.Image.Pool + "/" + info.ID + "@" + s.Snap
		if err := m.load(); err != nil {
			return nil, err
		}
	}
	slices.Sort(ids)
	group := strings.Join(ids, " ")
	if check != nil {
		imgs := make([]*Image, len(snaps))
		for i, s := range snaps {
			imgs[i] = members[slices.IndexFunc(ordered, func(o ImageSnap) bool { return o.Image == s.Image })].img
		}
		if err := check(imgs); err != nil {
			return nil, err
		}
	}

	// A repeat answers the same; another's snapshot of that name is not
	// touched; a partial set of this group's is retaken.
	if out, done := existingConsistent(members, group, snaps); done {
		return out, nil
	}
	for _, m := range members {
		if m.has && m.marker != group {
			return nil, fmt.Errorf("consistent snapshot: %s@%s exists, not of this group: %w", m.ref, m.name, ErrExists)
		}
	}
	for _, m := range members {
		if m.has {
			if err := m.img.RemoveSnapshot(m.name); err != nil && !errors.Is(err, ErrNotFound) {
				return nil, err
			}
			m.has = false
		}
	}

	defer func() {
		if err != nil {
			err = errors.Join(err, undoConsistent(members))
		}
	}()
	for _, m := range members {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if m.marker != group {
			if err := m.img.SetMetadata(ConsistentKey(m.name), group); err != nil {
				return nil, err
			}
			m.marked = true
		}
	}

	// The hold: every lock (requested together: each waits for its
	// writer to hand over), the snapshots (together), the release.
	holdStart := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := eachMember(members, func(m *groupMember) error {
		if err := m.img.LockExclusive(); err != nil {
			return fmt.Errorf("consistent snapshot %s@%s: %w", m.ref, m.name, err)
		}
		m.locked = true
		return nil
	}); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := eachMember(members, func(m *groupMember) error {
		if err := beforeConsistentSnapshot(m.ref); err != nil {
			return err
		}
		if err := m.img.CreateSnapshot(m.name); err != nil {
			return err
		}
		m.created = true
		return nil
	}); err != nil {
		return nil, err
	}
	for _, m := range members {
		// The snapshots are taken: a lock that fails to release here goes
		// with the image's Close.
		_ = m.img.ReleaseLock()
		m.locked = false
	}
	consistentHeld(time.Since(holdStart))

	for _, m := range members {
		if err := m.load(); err != nil {
			return nil, err
		}
		if !m.has {
			return nil, fmt.Errorf("consistent snapshot %s@%s: %w after its creation", m.ref, m.name, ErrNotFound)
		}
	}
	out, _ := existingConsistent(members, group, snaps)
	return out, nil
}

// eachMember runs fn for every member at once (librbd calls on different
// images run in parallel) and joins the errors.
func eachMember(members []*groupMember, fn func(*groupMember) error) error {
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(m)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// load reads whether m's image has its snapshot, and its marker.
func (m *groupMember) load() error {
	snaps, err := m.img.Snapshots()
	if err != nil {
		return err
	}
	m.has = false
	for _, s := range snaps {
		if s.Name == m.name {
			m.has, m.snap = true, s
		}
	}
	meta, err := m.img.Metadata()
	if err != nil {
		return err
	}
	m.marker = meta[ConsistentKey(m.name)]
	return nil
}

// existingConsistent answers the snapshots, in the order of snaps, when
// every member has its snapshot marked as group's.
func existingConsistent(members []*groupMember, group string, snaps []ImageSnap) ([]Snapshot, bool) {
	by := make(map[ImageRef]Snapshot, len(members))
	for _, m := range members {
		if !m.has || m.marker != group {
			return nil, false
		}
		by[m.ref] = m.snap
	}
	out := make([]Snapshot, len(snaps))
	for i, s := range snaps {
		out[i] = by[s.Image]
	}
	return out, true
}

// undoConsistent removes what a failed SnapshotConsistent made: its
// snapshots and markers (the locks go with the images' Close).
func undoConsistent(members []*groupMember) error {
	var errs error
	for _, m := range members {
		if m == nil {
			continue
		}
		if m.locked {
			errs = errors.Join(errs, m.img.ReleaseLock())
			m.locked = false
		}
		if m.created {
			if err := m.img.RemoveSnapshot(m.name); err != nil && !errors.Is(err, ErrNotFound) {
				errs = errors.Join(errs, fmt.Errorf("undoing the consistent snapshot: %w", err))
				continue // keep the marker: the snapshot is still this group's
			}
		}
		if m.marked {
			errs = errors.Join(errs, m.img.RemoveMetadata(ConsistentKey(m.name)))
		}
	}
	return errs
}

// RemoveConsistent removes each image's snapshot of snaps and its marker;
// an image or snapshot already gone is no error.
func (c *Cluster) RemoveConsistent(ctx context.Context, snaps []ImageSnap) error {
	var errs error
	for _, s := range snaps {
		if err := ctx.Err(); err != nil {
			return errors.Join(errs, err)
		}
		img, err := c.OpenImage(ctx, s.Image.Pool, s.Image.Name, "", false)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		if err := img.RemoveSnapshot(s.Snap); err != nil && !errors.Is(err, ErrNotFound) {
			errs = errors.Join(errs, err)
		} else {
			errs = errors.Join(errs, img.RemoveMetadata(ConsistentKey(s.Snap)))
		}
		errs = errors.Join(errs, img.Close())
	}
	return errs
}
