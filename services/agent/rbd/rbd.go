// Package rbd is Ferry's only door to Ceph: it alone imports go-ceph (cgo;
// build with -tags pacific against Ceph 16). Foreign errors are translated
// into this package's sentinel errors, with the original kept.
package rbd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	cephrbd "github.com/ceph/go-ceph/rbd"
)

// Sentinel errors; the Ceph error stays in the chain.
var (
	ErrNotFound   = errors.New("not found")
	ErrExists     = errors.New("already exists")
	ErrPermission = errors.New("permission denied")
	ErrBusy       = errors.New("busy")
	ErrTimeout    = errors.New("ceph did not answer within [agent] ceph_op_timeout (stalled or full cluster? see ferry service list)")
	ErrClosed     = errors.New("cluster connection closed")
	// ErrBlocklisted: the cluster blocklisted this connection (another
	// client broke an exclusive lock it held, e.g. after a stall): every
	// operation on it fails until it is replaced (Pool.Reset).
	ErrBlocklisted = errors.New("this cluster connection was blocklisted (another client broke a lock it held): it is replaced")
)

// errorCoder is the interface of go-ceph's errors.
type errorCoder interface{ ErrorCode() int }

// translate maps a go-ceph error to a sentinel, keeping the original.
func translate(err error, what string) error {
	if err == nil {
		return nil
	}
	var ec errorCoder
	code := 0
	if errors.As(err, &ec) {
		code = -ec.ErrorCode()
	}
	switch {
	case errors.Is(err, cephrbd.ErrNotFound), errors.Is(err, rados.ErrNotFound), code == int(syscall.ENOENT):
		return fmt.Errorf("%s: %w (%w)", what, ErrNotFound, err)
	case code == int(syscall.EEXIST):
		return fmt.Errorf("%s: %w (%w)", what, ErrExists, err)
	case code == int(syscall.EPERM), code == int(syscall.EACCES):
		return fmt.Errorf("%s: %w (%w)", what, ErrPermission, err)
	case code == int(syscall.EBUSY):
		return fmt.Errorf("%s: %w (%w)", what, ErrBusy, err)
	case code == int(syscall.ETIMEDOUT):
		return fmt.Errorf("%s: %w (%w)", what, ErrTimeout, err)
	case code == int(syscall.ESHUTDOWN): // Ceph's EBLOCKLISTED
		return fmt.Errorf("%s: %w (%w)", what, ErrBlocklisted, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Options say how to reach one cluster as one user.
type Options struct {
	ConfFile string // ceph.conf of the cluster
	User     string // client name without "client."
	Keyring  string // keyring path; empty: the one in ConfFile
	// Timeout bounds every monitor and OSD operation and the connection
	// itself (rados_mon_op_timeout, rados_osd_op_timeout,
	// client_mount_timeout): a stalled cluster fails with ErrTimeout
	// instead of blocking. 0 means DefaultTimeout.
	Timeout time.Duration
}

// DefaultTimeout is Options.Timeout's default ([agent] ceph_op_timeout).
const DefaultTimeout = 60 * time.Second

// settings are the configuration options Connect sets, in order, after
// reading the configuration file (so they win over it).
func (o Options) settings() [][2]string {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	secs := strconv.Itoa(max(int(timeout.Seconds()), 1))
	kv := [][2]string{{"client_mount_timeout", secs}, {"rados_mon_op_timeout", secs}, {"rados_osd_op_timeout", secs}}
	if o.Keyring != "" {
		kv = append(kv, [2]string{"keyring", o.Keyring})
	}
	return kv
}

// Cluster is one connection to a Ceph cluster.
type Cluster struct {
	// mu guards conn against use after Close: operations hold it shared
	// (a blocked one never blocks another, e.g. the health probe), Close
	// exclusively.
	mu   sync.RWMutex
	conn *rados.Conn
	fsid string
}

// Connect opens a connection. It honours ctx while the monitors are
// contacted (librados blocks up to the timeout otherwise).
func Connect(ctx context.Context, o Options) (*Cluster, error) {
	conn, err := rados.NewConnWithUser(o.User)
	if err != nil {
		return nil, translate(err, "ceph connection")
	}
	if err := conn.ReadConfigFile(o.ConfFile); err != nil {
		return nil, translate(err, "reading "+o.ConfFile)
	}
	for _, kv := range o.settings() {
		if err := conn.SetConfigOption(kv[0], kv[1]); err != nil {
			return nil, translate(err, "ceph option "+kv[0])
		}
	}
	done := make(chan error, 1)
	go func() { done <- conn.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			return nil, translate(err, fmt.Sprintf("connecting to the cluster of %s as client.%s", o.ConfFile, o.User))
		}
	case <-ctx.Done():
		// Connect returns after at most the mount timeout; shut down then.
		go func() {
			if <-done == nil {
				conn.Shutdown()
			}
		}()
		return nil, fmt.Errorf("connecting to the cluster of %s: %w", o.ConfFile, ctx.Err())
	}
	fsid, err := conn.GetFSID()
	if err != nil {
		conn.Shutdown()
		return nil, translate(err, "cluster fsid")
	}
	return &Cluster{conn: conn, fsid: fsid}, nil
}

// Close shuts the connection down. Images must be closed first; calls after
// Close return ErrClosed.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Shutdown()
		c.conn = nil
	}
}

// FSID is the cluster's id.
func (c *Cluster) FSID() string { return c.fsid }

// ioctx opens pool; the caller destroys it.
func (c *Cluster) ioctx(pool string) (*rados.IOContext, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.conn == nil {
		return nil, ErrClosed
	}
	io, err := c.conn.OpenIOContext(pool)
	if err != nil {
		return nil, translate(err, "pool "+pool)
	}
	return io, nil
}

// Addrs is the connection's client address (as the cluster's blocklist
// names it).
func (c *Cluster) Addrs() (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.conn == nil {
		return "", ErrClosed
	}
	a, err := c.conn.GetAddrs()
	return a, translate(err, "client address")
}

// probeObject is the object CheckBlocklisted stats (it need not exist).
const probeObject = "ferry.blocklist-probe"

// CheckBlocklisted asks an OSD of pool about an object: a connection the
// cluster blocklisted is refused (ErrBlocklisted), which monitor commands
// such as Health do not show. Any other answer, "no such object"
// included, is nil unless the OSD cannot be reached (its error).
func (c *Cluster) CheckBlocklisted(ctx context.Context, pool string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	_, err = io.Stat(probeObject)
	if err == nil || errors.Is(translate(err, "probe"), ErrNotFound) {
		return nil
	}
	return translate(err, "pool "+pool+": probe")
}

// ImageSpec is how to create an image.
type ImageSpec struct {
	Size     uint64
	Order    uint64 // log2 of the object size; 0: the cluster's default (22)
	Features uint64 // feature bits; 0: the cluster's default
}

// CreateImage creates pool/name.
func (c *Cluster) CreateImage(ctx context.Context, pool, name string, spec ImageSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	opts := cephrbd.NewRbdImageOptions()
	defer opts.Destroy()
	if spec.Order != 0 {
		if err := opts.SetUint64(cephrbd.ImageOptionOrder, spec.Order); err != nil {
			return translate(err, "image option order")
		}
	}
	if spec.Features != 0 {
		if err := opts.SetUint64(cephrbd.ImageOptionFeatures, spec.Features); err != nil {
			return translate(err, "image option features")
		}
	}
	return translate(cephrbd.CreateImage(io, name, spec.Size, opts), "creating image "+pool+"/"+name)
}

// RemoveImage deletes pool/name (it must have no snapshots).
func (c *Cluster) RemoveImage(ctx context.Context, pool, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	return translate(cephrbd.RemoveImage(io, name), "removing image "+pool+"/"+name)
}

// RenameImage renames pool/name to pool/to (ErrExists when to exists,
// ErrNotFound when name does not). The image keeps its id, snapshots and
// metadata; handles open on it keep working.
func (c *Cluster) RenameImage(ctx context.Context, pool, name, to string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	return translate(cephrbd.GetImage(io, name).Rename(to), "renaming image "+pool+"/"+name+" to "+to)
}

// Image is an open image. Open one per operation and Close it.
type Image struct {
	img        *cephrbd.Image
	io         *rados.IOContext
	pool, name string
}

// OpenImage opens pool/name, at snapshot snap when not empty (read-only
// then), read-only when readOnly is set.
func (c *Cluster) OpenImage(ctx context.Context, pool, name, snap string, readOnly bool) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	var img *cephrbd.Image
	if readOnly || snap != "" {
		img, err = cephrbd.OpenImageReadOnly(io, name, snapOrNone(snap))
	} else {
		img, err = cephrbd.OpenImage(io, name, cephrbd.NoSnapshot)
	}
	if err != nil {
		io.Destroy()
		what := "opening image " + pool + "/" + name
		if snap != "" {
			what += "@" + snap
		}
		return nil, translate(err, what)
	}
	return &Image{img: img, io: io, pool: pool, name: name}, nil
}

func snapOrNone(s string) string {
	if s == "" {
		return cephrbd.NoSnapshot
	}
	return s
}

// Close closes the image and its pool context.
func (i *Image) Close() error {
	err := i.img.Close()
	i.io.Destroy()
	return translate(err, "closing image "+i.pool+"/"+i.name)
}

// String is pool/name.
func (i *Image) String() string { return i.pool + "/" + i.name }

// Size is the image's (or the open snapshot's) size in bytes.
func (i *Image) Size() (uint64, error) {
	s, err := i.img.GetSize()
	return s, translate(err, "size of "+i.String())
}

// ReadAt reads len(p) bytes at off.
func (i *Image) ReadAt(p []byte, off int64) (int, error) {
	n, err := i.img.ReadAt(p, off)
	if err != nil {
		return n, translate(err, fmt.Sprintf("reading %s at %d", i, off))
	}
	return n, nil
}

// WriteAt writes p at off.
func (i *Image) WriteAt(p []byte, off int64) (int, error) {
	n, err := i.img.WriteAt(p, off)
	if err != nil {
		return n, translate(err, fmt.Sprintf("writing %s at %d", i, off))
	}
	return n, nil
}

// Flush makes the writes so far durable.
func (i *Image) Flush() error { return translate(i.img.Flush(), "flushing "+i.String()) }

// Snapshot is a snapshot of an image.
type Snapshot struct {
	ID   uint64
	Name string
	Size uint64
}

// CreateSnapshot takes snapshot name.
func (i *Image) CreateSnapshot(name string) error {
	_, err := i.img.CreateSnapshot(name)
	return translate(err, "creating snapshot "+i.String()+"@"+name)
}

// RemoveSnapshot removes snapshot name.
func (i *Image) RemoveSnapshot(name string) error {
	return translate(i.img.GetSnapshot(name).Remove(), "removing snapshot "+i.String()+"@"+name)
}

// Snapshots lists the image's snapshots, oldest first.
func (i *Image) Snapshots() ([]Snapshot, error) {
	infos, err := i.img.GetSnapshotNames()
	if err != nil {
		return nil, translate(err, "listing snapshots of "+i.String())
	}
	out := make([]Snapshot, 0, len(infos))
	for _, s := range infos {
		out = append(out, Snapshot{ID: s.Id, Name: s.Name, Size: s.Size})
	}
	return out, nil
}

// Metadata returns all image-meta keys.
func (i *Image) Metadata() (map[string]string, error) {
	m, err := i.img.ListMetadata()
	return m, translate(err, "metadata of "+i.String())
}

// SetMetadata sets one image-meta key.
func (i *Image) SetMetadata(key, value string) error {
	return translate(i.img.SetMetadata(key, value), "setting metadata "+key+" of "+i.String())
}

// CheckPool reports whether pool exists and is reachable.
func (c *Cluster) CheckPool(ctx context.Context, pool string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	io.Destroy()
	return nil
}

// Info describes an image.
type Info struct {
	ID       string
	Size     uint64
	Order    uint64 // log2 of the object size
	Features uint64
	// Parent is "pool/image@snap" for a clone, empty otherwise.
	Parent string
}

// ObjectSize is 1 << Order.
func (n Info) ObjectSize() uint64 { return 1 << n.Order }

// Info returns the image's (or the open snapshot's) description.
func (i *Image) Info() (Info, error) {
	st, err := i.img.Stat()
	if err != nil {
		return Info{}, translate(err, "stat of "+i.String())
	}
	f, err := i.img.GetFeatures()
	if err != nil {
		return Info{}, translate(err, "features of "+i.String())
	}
	id, err := i.img.GetId()
	if err != nil {
		return Info{}, translate(err, "id of "+i.String())
	}
	n := Info{ID: id, Size: st.Size, Order: uint64(st.Order), Features: f}
	if p, err := i.img.GetParent(); err == nil && p != nil && p.Image.ImageName != "" {
		n.Parent = p.Image.PoolName + "/" + p.Image.ImageName + "@" + p.Snap.SnapName
	}
	return n, nil
}

// Diff calls fn for each extent of the open snapshot (or head) that differs
// from snapshot fromSnap, or, when fromSnap is empty, for each allocated
// extent, parent data included (a clone is copied whole). exists is false for
// an extent known to read as zeros (discarded since fromSnap). wholeObject
// reports whole objects, cheap with fast-diff; otherwise exact extents.
// fn runs in librbd's thread: it must not block for long. ctx is checked
// between extents.
func (i *Image) Diff(ctx context.Context, fromSnap string, wholeObject bool, fn func(off, length uint64, exists bool) error) error {
	size, err := i.Size()
	if err != nil {
		return err
	}
	var cbErr error
	cfg := cephrbd.DiffIterateConfig{
		SnapName:      fromSnap,
		Offset:        0,
		Length:        size,
		IncludeParent: cephrbd.IncludeParent,
		WholeObject:   cephrbd.DisableWholeObject,
		Callback: func(off, length uint64, exists int, _ interface{}) int {
			if err := ctx.Err(); err != nil {
				cbErr = err
				return -int(syscall.ECANCELED)
			}
			if err := fn(off, length, exists != 0); err != nil {
				cbErr = err
				return -int(syscall.ECANCELED)
			}
			return 0
		},
	}
	if wholeObject {
		cfg.WholeObject = cephrbd.EnableWholeObject
	}
	if size == 0 {
		return nil
	}
	err = i.img.DiffIterate(cfg)
	if cbErr != nil {
		return cbErr
	}
	what := "diff of " + i.String()
	if fromSnap != "" {
		what += " from " + fromSnap
	}
	return translate(err, what)
}

// zeroBlock is what WriteZeroes repeats; librbd turns a write-same of zeros
// into a discard that really zeroes partial objects.
var zeroBlock = make([]byte, 4096)

// WriteZeroes makes [off, off+length) read as zeros.
func (i *Image) WriteZeroes(off, length uint64) error {
	bulk := length - length%uint64(len(zeroBlock))
	if bulk > 0 {
		if _, err := i.img.WriteSame(off, bulk, zeroBlock, 0); err != nil {
			return translate(err, fmt.Sprintf("zeroing %s at %d+%d", i, off, bulk))
		}
	}
	if rest := length - bulk; rest > 0 {
		if _, err := i.WriteAt(zeroBlock[:rest], int64(off+bulk)); err != nil {
			return err
		}
	}
	return nil
}

// Resize changes the image's size (shrinking allowed).
func (i *Image) Resize(size uint64) error {
	return translate(i.img.Resize(size), fmt.Sprintf("resizing %s to %d", i, size))
}

// RemoveMetadata removes one image-meta key; a missing key is not an error.
func (i *Image) RemoveMetadata(key string) error {
	err := i.img.RemoveMetadata(key)
	if errors.Is(translate(err, ""), ErrNotFound) {
		return nil
	}
	return translate(err, "removing metadata "+key+" of "+i.String())
}

// LockExclusive takes the image's exclusive lock (the image needs the
// exclusive-lock feature): while held, no other client can write it.
func (i *Image) LockExclusive() error {
	return translate(i.img.LockAcquire(cephrbd.LockModeExclusive), "exclusive lock of "+i.String())
}

// ReleaseLock releases the exclusive lock.
func (i *Image) ReleaseLock() error {
	return translate(i.img.LockRelease(), "releasing the lock of "+i.String())
}

// RollbackToSnapshot makes the head equal to snapshot name again.
func (i *Image) RollbackToSnapshot(name string) error {
	return translate(i.img.GetSnapshot(name).Rollback(), "rolling "+i.String()+" back to "+name)
}

// EnableFeatures turns features on for the image (e.g. exclusive-lock on an
// image created without it); features already on are no error.
func (i *Image) EnableFeatures(features uint64) error {
	return translate(i.img.UpdateFeatures(features, true), fmt.Sprintf("enabling features %#x of %s", features, i))
}
