package state

import (
	"slices"
	"testing"
)

// replicationReach is every replication status reachable from s (s included).
func replicationReach(s ReplicationStatus) map[ReplicationStatus]bool {
	seen := map[ReplicationStatus]bool{s: true}
	todo := []ReplicationStatus{s}
	for len(todo) > 0 {
		cur := todo[0]
		todo = todo[1:]
		for _, n := range replicationTransitions(cur) {
			if !seen[n] {
				seen[n] = true
				todo = append(todo, n)
			}
		}
	}
	return seen
}

// The replication machine's properties, checked over every status.
func TestReplicationStateMachineProperties(t *testing.T) {
	for _, s := range AllReplication() {
		if CanTransitionReplication(s, s) {
			t.Errorf("%s moves to itself", s)
		}
		for _, n := range replicationTransitions(s) {
			if !n.Valid() {
				t.Errorf("%s → unknown %q", s, n)
			}
		}
		// Every replication can be deleted, from wherever it is, but
		// while a failover or failback runs (it ends in a status that
		// can).
		if want := s != ReplicationDeleting && !s.InFailover(); s.CanDelete() != want {
			t.Errorf("%s.CanDelete() = %v", s, s.CanDelete())
		}
		if !replicationReach(s)[ReplicationDeleting] {
			t.Errorf("deleting is unreachable from %s", s)
		}
		// deleting is final: nothing brings a replication back.
		if s == ReplicationDeleting && len(replicationTransitions(s)) != 0 {
			t.Errorf("deleting → %v", replicationTransitions(s))
		}
		// Only an active or failed-over replication is scheduled; a
		// paused one or one in error can be resumed, nothing else.
		if s.Schedules() != (s == ReplicationActive || s == ReplicationFailedOver) {
			t.Errorf("%s.Schedules() = %v", s, s.Schedules())
		}
		if want := s == ReplicationPaused || s == ReplicationError; s.CanResume() != want {
			t.Errorf("%s.CanResume() = %v", s, s.CanResume())
		}
		// A failover starts from a live replication that is not failed
		// over; a failback from failed_over only.
		if want := s == ReplicationActive || s == ReplicationPaused || s == ReplicationError; s.CanFailover() != want {
			t.Errorf("%s.CanFailover() = %v", s, s.CanFailover())
		}
		if s.CanFailback() != (s == ReplicationFailedOver) {
			t.Errorf("%s.CanFailback() = %v", s, s.CanFailback())
		}
		// A failover or failback in flight ends: flipped, undone or in
		// error, never deleting directly.
		if s.InFailover() {
			for _, to := range []ReplicationStatus{ReplicationError} {
				if !CanTransitionReplication(s, to) {
					t.Errorf("%s cannot go to %s", s, to)
				}
			}
			if CanTransitionReplication(s, ReplicationDeleting) || CanTransitionReplication(s, ReplicationPaused) {
				t.Errorf("%s → %v", s, replicationTransitions(s))
			}
		}
		// An error does not unpause a replication: pause only from active.
		if s.CanPause() != (s == ReplicationActive) {
			t.Errorf("%s.CanPause() = %v", s, s.CanPause())
		}
		// A live replication can fail (its source volume goes away).
		if (s == ReplicationActive || s == ReplicationPaused) && !CanTransitionReplication(s, ReplicationError) {
			t.Errorf("%s cannot go to error", s)
		}
	}
	// Every status is reachable from active (the creation).
	r := replicationReach(ReplicationActive)
	for _, s := range AllReplication() {
		if !r[s] {
			t.Errorf("%s is unreachable", s)
		}
	}
	if ReplicationStatus("bogus").Valid() || CanTransitionReplication("bogus", ReplicationActive) {
		t.Error("an unknown status is valid or moves")
	}
}

func TestReplicationTransitionTable(t *testing.T) {
	tests := []struct {
		from, to ReplicationStatus
		want     bool
	}{
		{ReplicationActive, ReplicationPaused, true},
		{ReplicationPaused, ReplicationActive, true},
		{ReplicationError, ReplicationActive, true},
		{ReplicationError, ReplicationPaused, false},
		{ReplicationActive, ReplicationError, true},
		{ReplicationPaused, ReplicationDeleting, true},
		{ReplicationDeleting, ReplicationActive, false},
		{ReplicationDeleting, ReplicationError, false},
		{ReplicationActive, ReplicationFailingOver, true},
		{ReplicationPaused, ReplicationFailingOver, true},
		{ReplicationError, ReplicationFailingOver, true},
		{ReplicationFailingOver, ReplicationFailedOver, true},
		{ReplicationFailingOver, ReplicationActive, true},
		{ReplicationFailingOver, ReplicationError, true},
		{ReplicationFailingOver, ReplicationPaused, false},
		{ReplicationFailingOver, ReplicationDeleting, false},
		{ReplicationFailedOver, ReplicationFailingBack, true},
		{ReplicationFailedOver, ReplicationDeleting, true},
		{ReplicationFailedOver, ReplicationActive, false},
		{ReplicationFailedOver, ReplicationPaused, false},
		{ReplicationFailedOver, ReplicationFailingOver, false},
		{ReplicationFailingBack, ReplicationActive, true},
		{ReplicationFailingBack, ReplicationFailedOver, true},
		{ReplicationFailingBack, ReplicationError, true},
		{ReplicationFailingBack, ReplicationDeleting, false},
		{ReplicationDeleting, ReplicationFailingOver, false},
	}
	for _, tt := range tests {
		if got := CanTransitionReplication(tt.from, tt.to); got != tt.want {
			t.Errorf("%s → %s = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}

func TestDrillStateMachine(t *testing.T) {
	for _, from := range AllDrill() {
		for _, to := range AllDrill() {
			want := from == DrillCreating && to != DrillCreating
			if got := CanTransitionDrill(from, to); got != want {
				t.Errorf("drill %s → %s = %v, want %v", from, to, got, want)
			}
		}
	}
	if DrillStatus("done").Valid() {
		t.Error("unknown drill status valid")
	}
}

func TestFailoverStateMachine(t *testing.T) {
	for _, from := range AllFailover() {
		for _, to := range AllFailover() {
			want := from == FailoverRunning && to != FailoverRunning
			if got := CanTransitionFailover(from, to); got != want {
				t.Errorf("failover %s → %s = %v, want %v", from, to, got, want)
			}
		}
	}
	if FailoverStatus("failed").Valid() {
		t.Error("unknown failover status valid")
	}
}

func TestParseReplication(t *testing.T) {
	if s, err := ParseReplication(" Paused "); err != nil || s != ReplicationPaused {
		t.Errorf("%q %v", s, err)
	}
	if s, err := ParseReplication("FAILED_OVER"); err != nil || s != ReplicationFailedOver {
		t.Errorf("%q %v", s, err)
	}
	for _, in := range []string{"", "queued"} {
		if _, err := ParseReplication(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}

func TestFailoverFrom(t *testing.T) {
	for _, c := range []struct {
		failback, planned bool
		want              []ReplicationStatus
	}{
		{false, true, []ReplicationStatus{ReplicationActive, ReplicationPaused}},
		{false, false, []ReplicationStatus{ReplicationActive, ReplicationPaused, ReplicationError}},
		{true, true, []ReplicationStatus{ReplicationFailedOver}},
	} {
		if got := FailoverFrom(c.failback, c.planned); !slices.Equal(got, c.want) {
			t.Errorf("FailoverFrom(%v, %v) = %v, want %v", c.failback, c.planned, got, c.want)
		}
	}
}
