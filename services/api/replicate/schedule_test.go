package replicate

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

func TestNextRun(t *testing.T) {
	const iv = 5 * time.Minute
	const j = 7 * time.Second
	for _, tc := range []struct {
		name     string
		due, now time.Time
		want     time.Time
	}{
		{"on time keeps the grid", t0, t0, t0.Add(iv)},
		{"a tick late keeps the grid", t0, t0.Add(time.Second), t0.Add(iv)},
		{"almost an interval late keeps the grid", t0, t0.Add(iv - time.Millisecond), t0.Add(iv)},
		{"exactly an interval late restarts from now", t0, t0.Add(iv), t0.Add(2*iv + j)},
		{"hours of downtime: one cycle now, next an interval later", t0, t0.Add(3 * time.Hour), t0.Add(3*time.Hour + iv + j)},
		{"early (a sync set next_run_at ahead of the grid)", t0.Add(time.Minute), t0, t0.Add(time.Minute + iv)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NextRun(tc.due, tc.now, iv, j)
			if !got.Equal(tc.want) {
				t.Errorf("NextRun(%s, %s) = %s, want %s", tc.due.Format(time.TimeOnly), tc.now.Format(time.TimeOnly),
					got.Format(time.TimeOnly), tc.want.Format(time.TimeOnly))
			}
			if !got.After(tc.now) {
				t.Errorf("next run %s is not after now %s", got, tc.now)
			}
		})
	}
	if got := NextRun(t0, t0, 0, 0); !got.After(t0) {
		t.Errorf("a zero interval gives %s, not after now", got)
	}
}

// clock is a fake clock driving a simulated scheduler: at every tick a due
// replication runs one cycle and NextRun moves it on.
type sim struct {
	now, next time.Time
	interval  time.Duration
	jitter    time.Duration
	cycles    []time.Time
}

func (s *sim) tick() {
	if !s.next.After(s.now) {
		s.cycles = append(s.cycles, s.now)
		s.next = NextRun(s.next, s.now, s.interval, s.jitter)
	}
}

func (s *sim) run(d, step time.Duration) {
	for end := s.now.Add(d); s.now.Before(end); s.now = s.now.Add(step) {
		s.tick()
	}
}

func TestScheduleCatchUpIsOneCycle(t *testing.T) {
	for _, tc := range []struct {
		interval, tick, downtime time.Duration
	}{
		{5 * time.Second, time.Second, time.Minute},
		{5 * time.Minute, time.Second, 6 * time.Hour},
		{time.Hour, 10 * time.Second, 3 * 24 * time.Hour},
	} {
		t.Run(fmt.Sprintf("every %s, down %s", tc.interval, tc.downtime), func(t *testing.T) {
			s := &sim{now: t0, next: t0, interval: tc.interval, jitter: Jitter("r1", tc.interval)}
			s.run(10*tc.interval, tc.tick)
			if n := len(s.cycles); n < 9 || n > 11 {
				t.Fatalf("%d cycles in 10 intervals", n)
			}
			// Steady state: one cycle per interval, on the grid.
			for i := 1; i < len(s.cycles); i++ {
				if gap := s.cycles[i].Sub(s.cycles[i-1]); gap < tc.interval || gap > tc.interval+tc.tick {
					t.Errorf("cycle %d came %s after the previous one (interval %s)", i, gap, tc.interval)
				}
			}
			// Down: no ticks at all.
			s.now = s.now.Add(tc.downtime)
			before := len(s.cycles)
			back := s.now
			s.run(tc.interval-tc.tick, tc.tick)
			if n := len(s.cycles) - before; n != 1 {
				t.Fatalf("%d cycles in the first interval after the downtime, want 1 (no burst)", n)
			}
			if !s.cycles[before].Equal(back) {
				t.Errorf("the catch-up cycle ran at %s, want at once (%s)", s.cycles[before], back)
			}
			// Then the regular pace again, an interval (plus jitter) later.
			s.run(3*tc.interval, tc.tick)
			if gap := s.cycles[before+1].Sub(s.cycles[before]); gap < tc.interval || gap > tc.interval+tc.interval/10+tc.tick {
				t.Errorf("the cycle after the catch-up came %s later, want about %s", gap, tc.interval)
			}
		})
	}
}

func TestScheduleSkipsCountedNotQueued(t *testing.T) {
	// A cycle that runs longer than the interval: the scheduler skips the
	// due ones (the simulated "previous still running"), and when it ends,
	// the next cycle comes on the grid, not as a burst of the skipped ones.
	const iv = 5 * time.Second
	now, next := t0, t0
	busyUntil := t0.Add(17 * time.Second)
	var started, skipped []time.Time
	for ; now.Before(t0.Add(30 * time.Second)); now = now.Add(time.Second) {
		if next.After(now) {
			continue
		}
		if now.Before(busyUntil) && len(started) > 0 {
			skipped = append(skipped, now)
		} else {
			started = append(started, now)
		}
		next = NextRun(next, now, iv, 0)
	}
	if len(skipped) != 3 { // at 5, 10 and 15 s
		t.Errorf("skipped at %v, want 3 skips", skipped)
	}
	for i := 1; i < len(started); i++ {
		if started[i].Sub(started[i-1]) < iv {
			t.Errorf("cycles started %s apart: a burst", started[i].Sub(started[i-1]))
		}
	}
}

func TestJitter(t *testing.T) {
	ids := []string{"a", "b", "6f1d7c3e-2b8e-4a7e-9d61-0a0c8f1b2e33", "0d1c9a7a-4f1e-4c57-8c0e-3c6b0f1e9d22", ""}
	for _, iv := range []time.Duration{0, time.Nanosecond, 5 * time.Second, 5 * time.Minute, 24 * time.Hour} {
		for _, id := range ids {
			j := Jitter(id, iv)
			if j < 0 || (iv/10 > 0 && j >= iv/10) || (iv/10 == 0 && j != 0) {
				t.Errorf("Jitter(%q, %s) = %s, want in [0, %s)", id, iv, j, iv/10)
			}
			if j != Jitter(id, iv) {
				t.Errorf("Jitter(%q, %s) is not deterministic", id, iv)
			}
		}
	}
	// It spreads: 1000 replications do not share a handful of offsets.
	seen := map[time.Duration]bool{}
	for i := range 1000 {
		seen[Jitter(fmt.Sprintf("replication-%d", i), 5*time.Minute)] = true
	}
	if len(seen) < 900 {
		t.Errorf("1000 ids got only %d distinct offsets", len(seen))
	}
	if got := FirstRun("a", t0, 5*time.Minute); got.Before(t0) || !got.Before(t0.Add(30*time.Second)) {
		t.Errorf("FirstRun = %s, want within the first 10%% of an interval", got)
	}
}
