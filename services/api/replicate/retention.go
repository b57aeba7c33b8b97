package replicate

import (
	"cmp"
	"slices"
	"time"
)

// Point is a retained snapshot of a replica, as retention sees it.
type Point struct {
	Name      string
	CreatedAt time.Time // when the source snapshot was taken
}

// Policy is a replication's retention.
type Policy struct {
	KeepLast, KeepHourly, KeepDaily int
}

// Retain returns the names of the points to keep, newest first: the
// KeepLast newest; the newest point of each of the KeepHourly most recent
// hours (UTC) that have one; likewise per day for KeepDaily; always the
// newest point; and every point named in pinned. Points are matched by
// name; a pinned name that is not a point is ignored.
func Retain(points []Point, p Policy, pinned []string) []string {
	if len(points) == 0 {
		return nil
	}
	ps := slices.Clone(points)
	// Newest first; equal times by name, so the choice is deterministic.
	slices.SortStableFunc(ps, func(a, b Point) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(b.Name, a.Name)
	})
	keep := map[string]bool{ps[0].Name: true}
	for i := 0; i < p.KeepLast && i < len(ps); i++ {
		keep[ps[i].Name] = true
	}
	for _, bucket := range []struct {
		n     int
		trunc func(time.Time) time.Time
	}{
		{p.KeepHourly, func(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) }},
		{p.KeepDaily, func(t time.Time) time.Time {
			u := t.UTC()
			return time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, time.UTC)
		}},
	} {
		if bucket.n <= 0 {
			continue
		}
		seen := 0
		var last time.Time
		for i, pt := range ps {
			b := bucket.trunc(pt.CreatedAt)
			if i > 0 && b.Equal(last) {
				continue // an older point of a period already counted
			}
			last = b
			if seen++; seen > bucket.n {
				break
			}
			keep[pt.Name] = true
		}
	}
	for _, name := range pinned {
		if slices.ContainsFunc(ps, func(pt Point) bool { return pt.Name == name }) {
			keep[name] = true
		}
	}
	out := make([]string, 0, len(keep))
	for _, pt := range ps {
		if keep[pt.Name] {
			out = append(out, pt.Name)
			delete(keep, pt.Name) // a duplicate name is listed once
		}
	}
	return out
}
