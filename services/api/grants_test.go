package api

import (
	"context"
	"strings"
	"testing"
)

func TestGrantLedgerInTheDatabase(t *testing.T) {
	ctx := context.Background()
	d := testDB(t)
	g := grantLedger{db: d}
	long := strings.Repeat("p", 64)
	for _, p := range []string{"2968f6968f614dc49d6a407bb5acda7e", long} {
		if ok, err := g.Recorded(ctx, p); err != nil || ok {
			t.Fatalf("%s recorded before: %v %v", p, ok, err)
		}
		if err := g.Record(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := g.Record(ctx, p); err != nil { // again: idempotent
			t.Fatal(err)
		}
		if ok, err := g.Recorded(ctx, p); err != nil || !ok {
			t.Fatalf("%s not recorded: %v %v", p, ok, err)
		}
		if err := g.Clear(ctx, p); err != nil {
			t.Fatal(err)
		}
		if ok, _ := g.Recorded(ctx, p); ok {
			t.Errorf("%s still recorded after Clear", p)
		}
	}
	if n := len(grantLeaseName(long)); n > 64 {
		t.Errorf("lease name of a 64-character project is %d characters", n)
	}
}
