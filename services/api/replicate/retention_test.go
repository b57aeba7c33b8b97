package replicate

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// pts makes points named p<i> at the given offsets from t0 (any order).
func pts(offsets ...time.Duration) []Point {
	out := make([]Point, 0, len(offsets))
	for i, o := range offsets {
		out = append(out, Point{Name: fmt.Sprintf("p%d", i), CreatedAt: t0.Add(o)})
	}
	return out
}

func TestRetain(t *testing.T) {
	const m, h, d = time.Minute, time.Hour, 24 * time.Hour
	for _, tc := range []struct {
		name   string
		points []Point
		policy Policy
		pinned []string
		want   []string
	}{
		{"no points", nil, Policy{KeepLast: 3}, nil, nil},
		{"keep_last newest N", pts(0, 5*m, 10*m, 15*m, 20*m), Policy{KeepLast: 3}, nil, []string{"p4", "p3", "p2"}},
		{"unordered input", pts(15*m, 0, 20*m, 5*m, 10*m), Policy{KeepLast: 2}, nil, []string{"p2", "p0"}},
		{"keep_last larger than the points", pts(0, m), Policy{KeepLast: 10}, nil, []string{"p1", "p0"}},
		{"the newest is always kept", pts(0, m, 2*m), Policy{}, nil, []string{"p2"}},
		{"hourly: the newest of each of the last N hours that have one",
			// hours 12:xx (p0,p1), 13:xx (p2,p3), 15:xx (p4); 14:xx has none
			pts(10*m, 50*m, h+5*m, h+55*m, 3*h+m), Policy{KeepLast: 1, KeepHourly: 3}, nil, []string{"p4", "p3", "p1"}},
		{"hourly: fewer hours than N", pts(0, m, 2*m), Policy{KeepLast: 1, KeepHourly: 24}, nil, []string{"p2"}},
		{"daily: the newest of each of the last N days (UTC)",
			pts(0, 2*h, d+h, d+5*h, 3*d), Policy{KeepLast: 1, KeepDaily: 2}, nil, []string{"p4", "p3"}},
		{"hourly and daily together",
			pts(0, 2*h, d+h, d+5*h, 3*d, 3*d+h), Policy{KeepLast: 1, KeepHourly: 2, KeepDaily: 3}, nil, []string{"p5", "p4", "p3", "p1"}},
		{"pinned kept even when old", pts(0, m, 2*m, 3*m), Policy{KeepLast: 1}, []string{"p0"}, []string{"p3", "p0"}},
		{"pinned unknown name ignored", pts(0, m), Policy{KeepLast: 1}, []string{"ferry-gone"}, []string{"p1"}},
		{"pinned and kept anyway listed once", pts(0, m), Policy{KeepLast: 2}, []string{"p1", "p1"}, []string{"p1", "p0"}},
		{"same time: deterministic", []Point{{"a", t0}, {"b", t0}, {"c", t0}}, Policy{KeepLast: 2}, nil, []string{"c", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Retain(tc.points, tc.policy, tc.pinned)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Retain = %v, want %v", got, tc.want)
			}
		})
	}
}

// A replication every 5 minutes for three days, pruned after each cycle as
// the scheduler does (retention over the points plus the new one): the
// retained set is what the policy says at every step, and never grows
// beyond it.
func TestRetainOverTime(t *testing.T) {
	p := Policy{KeepLast: 3, KeepHourly: 4, KeepDaily: 2}
	var held []Point
	var pinned []string
	now := t0
	for i := range 3 * 24 * 12 {
		now = now.Add(5 * time.Minute)
		held = append(held, Point{Name: fmt.Sprintf("ferry-%04d", i), CreatedAt: now})
		if i == 100 {
			pinned = []string{held[len(held)-1].Name} // a drill of this point
		}
		keep := Retain(held, p, pinned)
		if keep[0] != held[len(held)-1].Name {
			t.Fatalf("cycle %d: the newest point %s is not kept first (%v)", i, held[len(held)-1].Name, keep)
		}
		held = slices.DeleteFunc(held, func(pt Point) bool { return !slices.Contains(keep, pt.Name) })
		if max := p.KeepLast + p.KeepHourly + p.KeepDaily + len(pinned); len(held) > max {
			t.Fatalf("cycle %d: %d points held, more than %d", i, len(held), max)
		}
	}
	names := make([]string, 0, len(held))
	for _, pt := range held {
		names = append(names, pt.Name+"@"+pt.CreatedAt.Format("01-02T15:04"))
	}
	// At 12-06 12:00: the last three (11:50, 11:55, 12:00); the newest of
	// the last four hours (12:00 and 11:55 already kept, 10:55, 09:55); of
	// the last two days (12:00 kept, 12-05 23:55); and the pinned one.
	want := []string{"ferry-0100@12-03T20:25", "ferry-0718@12-05T23:55", "ferry-0838@12-06T09:55", "ferry-0850@12-06T10:55",
		"ferry-0861@12-06T11:50", "ferry-0862@12-06T11:55", "ferry-0863@12-06T12:00"}
	if !slices.Equal(names, want) {
		t.Errorf("held %v, want %v", names, want)
	}
	if !slices.ContainsFunc(held, func(pt Point) bool { return pt.Name == "ferry-0100" }) {
		t.Errorf("the pinned point was pruned: %v", names)
	}
}
