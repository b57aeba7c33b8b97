package stream

import (
	"container/heap"
	"context"
	"fmt"
	"sync"
	"time"
)

// job is one prepared chunk: read, zero-checked, hashed and (maybe)
// compressed. It lives in the window from the moment it is ready until the
// destination acknowledges it, ready or in flight on one connection.
type job struct {
	frame Chunk
	buf   []byte // pooled buffer behind frame.Payload (nil: none)
	cost  uint64 // credit it takes in flight: its frame's size
	held  uint64 // read-ahead budget it holds until acknowledged
	conn  *srcConn
	sent  bool
	acked bool
	// writing: a connection is writing the frame now; its buffer is
	// released after the write even if an ack comes first.
	writing bool
	idx     int // in the ready heap, -1 when not there
}

func frameCost(c *Chunk) uint64 { return HeaderLen + ChunkFixedLen + uint64(len(c.Payload)) }

type jobHeap []*job

func (h jobHeap) Len() int           { return len(h) }
func (h jobHeap) Less(i, j int) bool { return h[i].frame.Seq < h[j].frame.Seq }
func (h jobHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].idx = i; h[j].idx = j }
func (h *jobHeap) Push(x any)        { j := x.(*job); j.idx = len(*h); *h = append(*h, j) }
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	j.idx = -1
	return j
}

// window is the source's shared state between the read-ahead pool and the
// connections: the ready queue (lowest seq first), the chunks in flight and
// on which connection, the destination's credit, the acknowledged set, and
// the read-ahead byte budget. One mutex guards it; changed is closed and
// replaced on every change that may unblock a waiter.
type window struct {
	mu      sync.Mutex
	changed chan struct{}

	ready jobHeap
	jobs  map[uint64]*job // prepared and not acknowledged

	// credit is the destination's grant in bytes (v2); used is what v2
	// connections have in flight against it. limit caps the grant
	// (SendRequest.Window).
	credit, used, limit uint64
	// maxAhead bounds seq - ackedNext for anything dispatched or sent.
	maxAhead uint64

	// ackedNext: every seq below is acknowledged; ackedAbove holds the
	// acknowledged seqs above it.
	ackedNext  uint64
	ackedAbove map[uint64]struct{}
	// planned is the next seq the planner will hand out; total and
	// planDone are set when it has handed out the last.
	planned  uint64
	total    uint64
	planDone bool

	budget, budgetUsed uint64

	stats *sendStats
}

func newWindow(start, limit, budget, maxAhead uint64, stats *sendStats) *window {
	return &window{
		changed:    make(chan struct{}),
		jobs:       make(map[uint64]*job),
		ackedNext:  start,
		ackedAbove: make(map[uint64]struct{}),
		planned:    start,
		limit:      limit,
		budget:     budget,
		maxAhead:   maxAhead,
		stats:      stats,
	}
}

// broadcast wakes every waiter; the caller holds mu.
func (w *window) broadcast() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// wait releases mu, waits for a change, ctx, another channel or a timer.
// The caller holds mu and gets it back.
func (w *window) wait(ctx context.Context, other <-chan struct{}, timer <-chan time.Time) error {
	ch := w.changed
	w.mu.Unlock()
	defer w.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-other:
		return nil
	case <-timer:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isAcked tells whether seq is acknowledged; the caller holds mu.
func (w *window) isAcked(seq uint64) bool {
	if seq < w.ackedNext {
		return true
	}
	_, ok := w.ackedAbove[seq]
	return ok
}

// admit waits until the planner may hand out seq: within maxAhead of the
// acknowledged watermark.
func (w *window) admit(ctx context.Context, seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for seq >= w.ackedNext+w.maxAhead {
		if err := w.wait(ctx, nil, nil); err != nil {
			return err
		}
	}
	w.planned = seq + 1
	return nil
}

// planned records the end of the plan.
func (w *window) finishPlan(total uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total, w.planDone = total, true
	w.planned = max(w.planned, total)
	w.broadcast()
}

// acquire reserves n bytes of buffer budget (n alone may exceed it when
// nothing else is held). Buffers are held until acknowledged, so the
// budget is the read-ahead's plus the credit in use (v2).
func (w *window) acquire(ctx context.Context, n uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.budgetUsed > 0 && w.budgetUsed+n > w.budget+min(w.credit, w.limit) {
		if err := w.wait(ctx, nil, nil); err != nil {
			return err
		}
	}
	w.budgetUsed += n
	return nil
}

func (w *window) release(n uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.budgetUsed -= n
	w.broadcast()
}

// addReady queues a prepared chunk, unless the destination already
// acknowledged it (it held the chunk from an earlier attempt).
func (w *window) addReady(j *job) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.isAcked(j.frame.Seq) {
		w.stats.countAcked(j)
		w.budgetUsed -= j.held
		j.held = 0
		putBuf(j.buf)
		j.buf = nil
		w.broadcast()
		return
	}
	w.jobs[j.frame.Seq] = j
	heap.Push(&w.ready, j)
	w.broadcast()
}

// finished tells whether every planned chunk is acknowledged.
func (w *window) finished() bool {
	return w.planDone && w.ackedNext >= w.total && len(w.jobs) == 0
}

// hasWork waits until there is a chunk ready or the transfer is finished
// (false).
func (w *window) hasWork(ctx context.Context) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.finished() {
			return false, nil
		}
		if len(w.ready) > 0 {
			return true, nil
		}
		if err := w.wait(ctx, nil, nil); err != nil {
			return false, err
		}
	}
}

// take pops the lowest ready chunk if c may send it now: within maxAhead,
// and within the credit (v2; a chunk alone may exceed it) or the
// connection's pipeline (v1). ok false with done true: nothing left at all.
func (w *window) take(c *srcConn) (j *job, done bool) {
	if w.finished() {
		return nil, true
	}
	for len(w.ready) > 0 && w.ready[0].acked {
		heap.Pop(&w.ready)
	}
	if len(w.ready) == 0 {
		return nil, false
	}
	j = w.ready[0]
	if j.frame.Seq >= w.ackedNext+c.maxAhead {
		return nil, false
	}
	if c.version == 1 {
		if len(c.order) >= c.pipeline {
			return nil, false
		}
	} else if w.used > 0 && w.used+j.cost > min(w.credit, w.limit) {
		return nil, false
	} else if w.credit == 0 {
		return nil, false
	}
	heap.Pop(&w.ready)
	if j.sent {
		w.stats.resent.Add(1)
	}
	j.sent, j.conn, j.writing = true, c, true
	if len(c.inflight) == 0 {
		c.lastProgress = time.Now()
	}
	c.inflight[j.frame.Seq] = j
	if c.version == 1 {
		c.order = append(c.order, j.frame.Seq)
	}
	if c.version >= 2 {
		w.used += j.cost
		w.stats.noteInFlight(w.used)
	}
	return j, false
}

// next returns the chunk c sends next. It flushes c (flush) before it
// blocks. It returns nil when every chunk is acknowledged, and an error
// when c failed (dead is closed), ctx ended or c's oldest chunk waited
// longer than timeout for its ack.
func (w *window) next(ctx context.Context, c *srcConn, flush func() error, timeout time.Duration) (*job, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	flushed := false
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		j, done := w.take(c)
		if j != nil || done {
			return j, nil
		}
		if c.err != nil {
			return nil, c.err
		}
		if !flushed {
			flushed = true
			w.mu.Unlock()
			err := flush()
			w.mu.Lock()
			if err != nil {
				return nil, err
			}
			continue
		}
		var tc <-chan time.Time
		if len(c.inflight) > 0 {
			left := timeout - time.Since(c.lastProgress)
			if left <= 0 {
				return nil, fmt.Errorf("no ack for seq %d within %v", lowest(c.inflight), timeout)
			}
			if timer == nil {
				timer = time.NewTimer(left)
			} else {
				timer.Reset(left)
			}
			tc = timer.C
		}
		if err := w.wait(ctx, nil, tc); err != nil {
			return nil, err
		}
	}
}

// wrote ends the write of j's frame; an ack that came meanwhile left its
// buffer for now.
func (w *window) wrote(j *job) {
	w.mu.Lock()
	defer w.mu.Unlock()
	j.writing = false
	if j.acked && j.buf != nil {
		putBuf(j.buf)
		j.buf = nil
	}
}

// lowest is the lowest seq of a connection's chunks in flight.
func lowest(inflight map[uint64]*job) uint64 {
	first := true
	var low uint64
	for seq := range inflight {
		if first || seq < low {
			low, first = seq, false
		}
	}
	return low
}

// ackOne marks seq acknowledged (the caller holds mu). A seq not planned
// yet is remembered: the read-ahead drops it when it is ready.
func (w *window) ackOne(seq uint64) {
	if w.isAcked(seq) {
		return
	}
	if j := w.jobs[seq]; j != nil {
		delete(w.jobs, seq)
		j.acked = true
		if c := j.conn; c != nil {
			delete(c.inflight, seq)
			c.lastProgress = time.Now()
			c.progress = true
			if c.version >= 2 {
				w.used -= j.cost
			}
		}
		if j.idx >= 0 {
			heap.Remove(&w.ready, j.idx)
		}
		w.budgetUsed -= j.held
		j.held = 0
		if !j.writing {
			putBuf(j.buf)
			j.buf = nil
		}
		w.stats.countAcked(j)
	}
	if seq == w.ackedNext {
		w.ackedNext++
		for {
			if _, ok := w.ackedAbove[w.ackedNext]; !ok {
				break
			}
			delete(w.ackedAbove, w.ackedNext)
			w.ackedNext++
		}
	} else {
		w.ackedAbove[seq] = struct{}{}
	}
}

// applyAcks applies a v2 Acks frame received on c. Seqs the planner has
// not handed out yet are ignored (a later Acks repeats them).
func (w *window) applyAcks(c *srcConn, a *Acks) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if a.Window == 0 {
		return protoErrorf("acks grant no credit")
	}
	w.credit = a.Window
	upto := min(a.Watermark, w.planned)
	for seq := w.ackedNext; seq < upto; seq++ {
		w.ackOne(seq)
	}
	for _, r := range a.Ranges {
		for seq := max(r.Start, w.ackedNext); seq < min(r.End, w.planned); seq++ {
			w.ackOne(seq)
		}
	}
	w.broadcast()
	return nil
}

// applyAckV1 applies a v1 Ack: it must be c's oldest unacknowledged chunk.
func (w *window) applyAckV1(c *srcConn, seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(c.order) == 0 || c.order[0] != seq {
		return protoErrorf("ack for seq %d out of order", seq)
	}
	c.order = c.order[1:]
	w.ackOne(seq)
	w.broadcast()
	return nil
}

// grant records a v2 HelloOK: the credit, how far ahead seqs may run, and
// the destination's watermark as an acknowledgement.
func (w *window) grant(c *srcConn, h *HelloOK) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.version >= 2 {
		w.credit = h.Window
		upto := min(h.Watermark, w.planned)
		for seq := w.ackedNext; seq < upto; seq++ {
			w.ackOne(seq)
		}
	}
	w.maxAhead = c.maxAhead
	w.broadcast()
}

// requeue puts the chunks c had in flight back into the ready queue: c
// dropped, and another connection (or c's next one) sends them.
func (w *window) requeue(c *srcConn, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for seq, j := range c.inflight {
		delete(c.inflight, seq)
		j.conn = nil
		if c.version >= 2 {
			w.used -= j.cost
		}
		if !j.acked {
			heap.Push(&w.ready, j)
		}
	}
	c.order = nil
	if c.err == nil {
		c.err = err
	}
	w.broadcast()
}

// fail marks c failed so that its writer stops waiting.
func (w *window) fail(c *srcConn, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
	w.broadcast()
}
