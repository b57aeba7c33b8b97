package state

import (
	"slices"
	"testing"
)

// reach is every status reachable from s (s included).
func reach(s Status) map[Status]bool {
	seen := map[Status]bool{s: true}
	todo := []Status{s}
	for len(todo) > 0 {
		cur := todo[0]
		todo = todo[1:]
		for _, n := range transitions(cur) {
			if !seen[n] {
				seen[n] = true
				todo = append(todo, n)
			}
		}
	}
	return seen
}

// The machine's properties, checked over every status rather than against
// a second copy of its table.
func TestStateMachineProperties(t *testing.T) {
	all := All()
	for _, s := range all {
		if CanTransition(s, s) {
			t.Errorf("%s moves to itself", s)
		}
		for _, n := range transitions(s) {
			if !n.Valid() {
				t.Errorf("%s → unknown %q", s, n)
			}
		}
		// Every transfer can end: a terminal status is reachable.
		ends := false
		for r := range reach(s) {
			ends = ends || IsTerminal(r)
		}
		if !ends {
			t.Errorf("no terminal status is reachable from %s", s)
		}
		// Terminal statuses go nowhere, but for error's retry.
		if IsTerminal(s) {
			for _, n := range transitions(s) {
				if s != Error || n != Queued {
					t.Errorf("terminal %s → %s", s, n)
				}
			}
		}
		// Every non-terminal status can fail.
		if !IsTerminal(s) && !CanTransition(s, Error) {
			t.Errorf("%s cannot go to error", s)
		}
		// Active statuses are never terminal, never queued.
		if IsActive(s) && (IsTerminal(s) || s == Queued) {
			t.Errorf("%s is active and terminal or queued", s)
		}
		// A user can cancel anything an agent may still start or copy;
		// not a copy being registered (finalizing), nor a finished one.
		wantCancel := !IsTerminal(s) && s != Finalizing && s != Cancelling
		if CanCancel(s) != wantCancel {
			t.Errorf("CanCancel(%s) = %v", s, CanCancel(s))
		}
		if CanRetry(s) != (s == Error) {
			t.Errorf("CanRetry(%s) = %v", s, CanRetry(s))
		}
	}
	// Every status is reachable from queued (the creation).
	r := reach(Queued)
	for _, s := range all {
		if !r[s] {
			t.Errorf("%s is unreachable", s)
		}
	}
	// The happy path is a path of the machine, ranked in order.
	hp := HappyPath()
	for i := 1; i < len(hp); i++ {
		if !CanTransition(hp[i-1], hp[i]) {
			t.Errorf("happy path step %s → %s is not a transition", hp[i-1], hp[i])
		}
		if Rank(hp[i]) != i {
			t.Errorf("Rank(%s) = %d", hp[i], Rank(hp[i]))
		}
	}
	// verifying may skip finalizing (a copy with nothing to register).
	if !CanTransition(Verifying, Completed) {
		t.Error("verifying → completed")
	}
	for _, s := range []Status{Error, Cancelling, Cancelled, "bogus"} {
		if Rank(s) != -1 {
			t.Errorf("Rank(%s) = %d, want -1 (off the path)", s, Rank(s))
		}
	}
	// Re-dispatch: only an agent's statuses before the copy ends go back.
	for _, s := range all {
		back := CanTransition(s, Queued)
		want := s == Accepted || s == Preparing || s == Transferring || s == Error
		if back != want {
			t.Errorf("%s → queued: %v", s, back)
		}
	}
	if !slices.Equal(all[:len(hp)-2], hp[:len(hp)-2]) {
		t.Error("All does not follow a transfer's life")
	}
}

func TestParse(t *testing.T) {
	if s, err := Parse(" Completed "); err != nil || s != Completed {
		t.Errorf("%q %v", s, err)
	}
	for _, in := range []string{"", "done"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}
