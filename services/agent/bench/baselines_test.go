//go:build bench

package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/services/agent/rbd"
)

// The baselines Ferry is measured against, each timed the same way: from
// start to the destination image complete.

// rbdPipe is what operators do by hand: rbd export - | rbd import -.
func rbdPipe(ctx context.Context, st *stackEnv, pool, src, dst string) (time.Duration, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c",
		fmt.Sprintf("rbd -c %s --no-progress export %s/%s - | rbd -c %s --no-progress import - %s/%s",
			st.conf("REGIONONE"), pool, src, st.conf("REGIONTWO"), pool, dst))
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("rbd pipe: %w: %s", err, out)
	}
	return time.Since(start), nil
}

// rbdDiffPipe is the incremental by hand: export-diff --from-snap | import-diff.
func rbdDiffPipe(ctx context.Context, st *stackEnv, pool, image, fromSnap, toSnap, dst string) (time.Duration, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c",
		fmt.Sprintf("rbd -c %s --no-progress export-diff --from-snap %s %s/%s@%s - | rbd -c %s --no-progress import-diff - %s/%s",
			st.conf("REGIONONE"), fromSnap, pool, image, toSnap, st.conf("REGIONTWO"), pool, dst))
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("rbd diff pipe: %w: %s", err, out)
	}
	return time.Since(start), nil
}

// rbdImportFile is the destination's write limit: rbd import from a local
// file (parallel writes). The export to the file is not timed.
func rbdImportFile(ctx context.Context, st *stackEnv, dir, pool, src, dst string) (time.Duration, error) {
	file := filepath.Join(dir, "export.raw")
	defer os.Remove(file)
	if out, err := exec.CommandContext(ctx, "rbd", "-c", st.conf("REGIONONE"), "--no-progress", "export", pool+"/"+src, file).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("rbd export: %w: %s", err, out)
	}
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "rbd", "-c", st.conf("REGIONTWO"), "--no-progress", "import", file, pool+"/"+dst).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("rbd import: %w: %s", err, out)
	}
	return time.Since(start), nil
}

// inprocessCopy is the practical limit: go-ceph reads in one cluster and
// writes in the other from parallel workers, no network, no TLS, no
// digests. allocatedOnly copies just the allocated extents; otherwise
// every byte.
func inprocessCopy(ctx context.Context, st *stackEnv, pool, src, snap, dst string, allocatedOnly bool) (time.Duration, uint64, error) {
	a, err := st.cluster(ctx, "REGIONONE")
	if err != nil {
		return 0, 0, err
	}
	defer a.Close()
	b, err := st.cluster(ctx, "REGIONTWO")
	if err != nil {
		return 0, 0, err
	}
	defer b.Close()
	start := time.Now()
	in, err := a.OpenImage(ctx, pool, src, snap, true)
	if err != nil {
		return 0, 0, err
	}
	defer in.Close()
	info, err := in.Info()
	if err != nil {
		return 0, 0, err
	}
	if err := b.CreateImage(ctx, pool, dst, rbd.ImageSpec{Size: info.Size, Order: info.Order}); err != nil {
		return 0, 0, err
	}
	out, err := b.OpenImage(ctx, pool, dst, "", false)
	if err != nil {
		return 0, 0, err
	}
	defer out.Close()
	const piece = 16 << 20
	type span struct{ off, n uint64 }
	var spans []span
	if allocatedOnly {
		err = in.Diff(ctx, "", false, func(off, length uint64, exists bool) error {
			for length > 0 && exists {
				n := min(length, piece)
				spans = append(spans, span{off, n})
				off, length = off+n, length-n
			}
			return nil
		})
		if err != nil {
			return 0, 0, err
		}
	} else {
		for off := uint64(0); off < info.Size; off += piece {
			spans = append(spans, span{off, min(piece, info.Size-off)})
		}
	}
	var moved uint64
	var mu sync.Mutex
	work := make(chan span)
	g, gctx := errgroup.WithContext(ctx)
	for range 16 {
		g.Go(func() error {
			buf := make([]byte, piece)
			for s := range work {
				if _, err := in.ReadAt(buf[:s.n], int64(s.off)); err != nil {
					return err
				}
				if _, err := out.WriteAt(buf[:s.n], int64(s.off)); err != nil {
					return err
				}
				mu.Lock()
				moved += s.n
				mu.Unlock()
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(work)
		for _, s := range spans {
			select {
			case work <- s:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return 0, 0, err
	}
	if err := out.Flush(); err != nil {
		return 0, 0, err
	}
	return time.Since(start), moved, nil
}
