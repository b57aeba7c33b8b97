package state

import "testing"

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
		// Every replication can be deleted, from wherever it is.
		if s != ReplicationDeleting && !s.CanDelete() {
			t.Errorf("%s cannot be deleted", s)
		}
		if !replicationReach(s)[ReplicationDeleting] {
			t.Errorf("deleting is unreachable from %s", s)
		}
		// deleting is final: nothing brings a replication back.
		if s == ReplicationDeleting && len(replicationTransitions(s)) != 0 {
			t.Errorf("deleting → %v", replicationTransitions(s))
		}
		// Only an active replication is scheduled; every status that is
		// not active nor deleting can be resumed.
		if s.Schedules() != (s == ReplicationActive) {
			t.Errorf("%s.Schedules() = %v", s, s.Schedules())
		}
		if want := s != ReplicationActive && s != ReplicationDeleting; s.CanResume() != want {
			t.Errorf("%s.CanResume() = %v", s, s.CanResume())
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

func TestParseReplication(t *testing.T) {
	if s, err := ParseReplication(" Paused "); err != nil || s != ReplicationPaused {
		t.Errorf("%q %v", s, err)
	}
	for _, in := range []string{"", "queued"} {
		if _, err := ParseReplication(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}
