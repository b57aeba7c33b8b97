package pki

import (
	"errors"
	"testing"
)

func TestIssueIdentity(t *testing.T) {
	caDir := newCA(t)
	out := t.TempDir()
	certPath, _, err := Issue(caDir, out, "agent-r1", IssueOptions{Region: "RegionOne", Role: RoleAgent})
	if err != nil {
		t.Fatal(err)
	}
	cert := parseCertFile(t, certPath)
	if r, role := Identity(cert); r != "RegionOne" || role != RoleAgent {
		t.Fatalf("identity %q %q", r, role)
	}
	if err := CheckIdentity(cert, "RegionOne", RoleAgent); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct{ region, role string }{{"RegionTwo", RoleAgent}, {"RegionOne", "api"}} {
		if err := CheckIdentity(cert, tc.region, tc.role); !errors.Is(err, ErrIdentity) {
			t.Errorf("%v: %v", tc, err)
		}
	}
	plainPath, _, err := Issue(caDir, out, "old-agent", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckIdentity(parseCertFile(t, plainPath), "RegionOne", RoleAgent); !errors.Is(err, ErrIdentity) {
		t.Errorf("a certificate without identity: %v", err)
	}
	if _, _, err := Issue(caDir, out, "bad", IssueOptions{Region: "Region:One"}); err == nil {
		t.Error("a region with a colon was accepted")
	}
}
