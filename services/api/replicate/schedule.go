package replicate

import (
	"hash/fnv"
	"time"
)

// NextRun is when a replication whose cycle was due at due runs next, the
// cycle having started (or been skipped) at now. On time or a little late,
// the schedule keeps its grid (due + interval); more than one interval late
// (downtime, a pause), it restarts from now: one cycle now, the next one
// interval (plus the replication's jitter) later, never a burst of the
// missed ones. The result is always after now.
func NextRun(due, now time.Time, interval, jitter time.Duration) time.Time {
	if interval <= 0 {
		interval = time.Second
	}
	next := due.Add(interval)
	if next.After(now) {
		return next
	}
	return now.Add(interval + jitter)
}

// Jitter is a replication's offset in its interval: deterministic per id,
// in [0, interval/10).
func Jitter(id string, interval time.Duration) time.Duration {
	span := interval / 10
	if span <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return time.Duration(h.Sum64() % uint64(span))
}

// FirstRun is when a new replication runs its first cycle: at once, but
// spread by its jitter.
func FirstRun(id string, created time.Time, interval time.Duration) time.Time {
	return created.Add(Jitter(id, interval))
}
