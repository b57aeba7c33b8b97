package cinder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/services/internal/config"
)

const (
	volA = "44444444-0000-4000-8000-000000000001" // demo's, available
	volB = "44444444-0000-4000-8000-000000000002" // demo's, attached
	volC = "44444444-0000-4000-8000-000000000003" // alt's
	volD = "44444444-0000-4000-8000-000000000004" // demo's, creating
)

func failoverCloud(t *testing.T) (*fakeCloud, *Service) {
	f := newFakeCloud(t)
	f.volumes[volA] = map[string]any{"id": volA, "status": "available", "size": 3, "name": "data", "description": "d", "owner": "demo",
		"metadata": map[string]string{"k": "v"}, "bootable": "false", "volume_type": "ssd"}
	f.volumes[volB] = map[string]any{"id": volB, "status": "in-use", "size": 1, "owner": "demo",
		"metadata": map[string]string{"attached_mode": "rw", "readonly": "False"}, "attachments": []map[string]string{{"server_id": "s1", "attachment_id": "a1"}}}
	f.volumes[volC] = map[string]any{"id": volC, "status": "available", "size": 1, "owner": "alt"}
	f.volumes[volD] = map[string]any{"id": volD, "status": "creating", "size": 1, "owner": "demo"}
	return f, newService(t, f)
}

// The actions of f's log (requests other than GETs and Keystone's).
func (f *fakeCloud) actionLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.actions...)
}

// InspectVolume reads a volume as the service user in its own project
// (no role is granted on the owner's): its spec, status, attachment and
// read-only flag. Another project's volume is not found.
func TestInspectVolume(t *testing.T) {
	f, s := failoverCloud(t)
	ctx := context.Background()
	st, err := s.InspectVolume(ctx, "RegionOne", "demo", volA)
	if err != nil {
		t.Fatal(err)
	}
	want := VolumeState{Spec: VolumeSpec{Kind: "volume", ID: volA, Name: "data", Description: "d", SizeGiB: 3, Metadata: map[string]string{"k": "v"},
		ProjectID: "demo", VolumeType: "ssd"}, Status: "available"}
	if mustJSON(st) != mustJSON(want) {
		t.Errorf("InspectVolume = %s, want %s", mustJSON(st), mustJSON(want))
	}
	st, err = s.InspectVolume(ctx, "RegionOne", "demo", volB)
	if err != nil || !st.Attached || st.ReadOnly || st.Spec.Metadata != nil {
		t.Errorf("attached volume: %+v %v", st, err)
	}
	f.volumes[volB]["metadata"].(map[string]string)["readonly"] = "True"
	if st, err := s.InspectVolume(ctx, "RegionOne", "demo", volB); err != nil || !st.ReadOnly {
		t.Errorf("read-only volume: %+v %v", st, err)
	}
	if !containsLine(f.log, "GET /one/v3/volumes/"+volA+" tok-service-project") || len(f.grants) != 0 {
		t.Errorf("requests %q, grants %v", f.log, f.grants)
	}
	for _, tc := range []struct {
		project, id string
		want        error
		msg         string
	}{
		{"demo", volC, ErrNotFound, "volume " + volC + " could not be found in project demo in region RegionOne"},
		{"demo", "55555555-0000-4000-8000-000000000000", ErrNotFound, "could not be found in region RegionOne"},
		{"demo", "../volumes/detail", ErrInvalid, "is not a UUID"},
	} {
		if _, err := s.InspectVolume(ctx, "RegionOne", tc.project, tc.id); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s %s: %v, want %v %q", tc.project, tc.id, err, tc.want, tc.msg)
		}
	}
	if _, err := s.InspectVolume(ctx, "RegionNine", "demo", volA); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("unknown region: %v", err)
	}
}

// SetReadOnly changes the flag of an available volume, does nothing when
// the flag already is so, and says why Cinder would refuse otherwise.
func TestSetReadOnly(t *testing.T) {
	f, s := failoverCloud(t)
	ctx := context.Background()
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volA, true); err != nil {
		t.Fatal(err)
	}
	if md := f.volumes[volA]["metadata"].(map[string]string); md["readonly"] != "True" || md["k"] != "v" {
		t.Errorf("metadata after: %v", md)
	}
	if st, err := s.InspectVolume(ctx, "RegionOne", "demo", volA); err != nil || !st.ReadOnly || mustJSON(st.Spec.Metadata) != `{"k":"v"}` {
		t.Errorf("after SetReadOnly: %+v %v", st, err)
	}
	// A repeat asks nothing of Cinder.
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volA, true); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.actionLog(), ","); got != volA+" os-update_readonly_flag" {
		t.Errorf("actions: %s", got)
	}
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volA, false); err != nil || f.volumes[volA]["metadata"].(map[string]string)["readonly"] != "False" {
		t.Errorf("clear: %v, metadata %v", err, f.volumes[volA]["metadata"])
	}
	// Cinder changes the flag of an available volume only.
	n := len(f.actionLog())
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volB, true); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "volume "+volB+" is in-use (attached)") {
		t.Errorf("attached: %v", err)
	}
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volB, false); err != nil {
		t.Errorf("attached, flag already clear: %v", err)
	}
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volD, true); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "is creating") {
		t.Errorf("creating: %v", err)
	}
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volC, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("another project's: %v", err)
	}
	if len(f.actionLog()) != n {
		t.Errorf("refused changes reached Cinder: %q", f.actionLog()[n:])
	}
	// The volume's status changed between the read and the action: Cinder's 400.
	f.volumes[volA]["status"] = "available"
	f.volumes[volA]["metadata"] = map[string]string{}
	f.hookAction = func(v map[string]any) { v["status"] = "maintenance" }
	if err := s.SetReadOnly(ctx, "RegionOne", "demo", volA, true); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "refused the read-only flag") {
		t.Errorf("refused by Cinder: %v", err)
	}
	if len(f.grants) != 0 {
		t.Errorf("grants: %v", f.grants)
	}
}

// UnmanageVolume asks once and waits until Cinder forgets the volume; a
// volume already gone is success, one of another project is not.
func TestUnmanageVolume(t *testing.T) {
	f, s := failoverCloud(t)
	ctx := context.Background()
	if err := s.UnmanageVolume(ctx, "RegionOne", "demo", volA); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.volumes[volA]; ok || strings.Join(f.actionLog(), ",") != volA+" os-unmanage" {
		t.Errorf("after unmanage: volume kept %v, actions %q", ok, f.actionLog())
	}
	if err := s.UnmanageVolume(ctx, "RegionOne", "demo", volA); err != nil || len(f.actionLog()) != 1 {
		t.Errorf("a repeat: %v, actions %q", err, f.actionLog())
	}
	// An unmanage under way (an interrupted attempt's) is waited for.
	f.volumes[volD]["status"] = "unmanaging"
	if err := s.UnmanageVolume(ctx, "RegionOne", "demo", volD); err != nil || len(f.actionLog()) != 1 {
		t.Errorf("under way: %v, actions %q", err, f.actionLog())
	}
	if err := s.UnmanageVolume(ctx, "RegionOne", "demo", volB); !errors.Is(err, ErrInUse) {
		t.Errorf("attached: %v", err)
	}
	if err := s.UnmanageVolume(ctx, "RegionOne", "demo", volC); !errors.Is(err, ErrNotFound) || f.volumes[volC] == nil {
		t.Errorf("another project's: %v", err)
	}
	f.volumes[volC]["status"] = "error_unmanaging"
	f.volumes[volC]["owner"] = "demo"
	if err := s.UnmanageVolume(ctx, "RegionOne", "demo", volC); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "is error_unmanaging") {
		t.Errorf("error_unmanaging: %v", err)
	}
	if len(f.actionLog()) != 1 || len(f.grants) != 0 {
		t.Errorf("actions %q, grants %v", f.actionLog(), f.grants)
	}
}

func TestMapVolumeType(t *testing.T) {
	f := newFakeCloud(t)
	c := config.Cinder{CatalogInfo: "volumev3::publicURL", VolumeTypeMap: []string{"RegionOne:ssd=RegionTwo:fast", "RegionTwo:fast=RegionOne:ssd"}}
	s, err := New(config.KeystoneAuthtoken{AuthURL: f.srv.URL + "/v3"}, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, typ, to, want string }{
		{"RegionOne", "ssd", "RegionTwo", "fast"},
		{"RegionTwo", "fast", "RegionOne", "ssd"},
		{"RegionOne", "hdd", "RegionTwo", ""},
		{"RegionOne", "ssd", "RegionThree", ""},
		{"RegionOne", "", "RegionTwo", ""},
	} {
		if got := s.MapVolumeType(tc.from, tc.typ, tc.to); got != tc.want {
			t.Errorf("MapVolumeType(%s, %s, %s) = %q, want %q", tc.from, tc.typ, tc.to, got, tc.want)
		}
	}
	c.VolumeTypeMap = []string{"RegionOne:ssd"}
	if _, err := New(config.KeystoneAuthtoken{}, c, nil); err == nil || !strings.Contains(err.Error(), "volume_type_map") {
		t.Errorf("a bad map: %v", err)
	}
}

// A registration takes its volume type from Registration.VolumeType (the
// spec's is the source region's), and with KeepImage a volume that fails
// to register is unmanaged, never deleted.
func TestRegisterVolumeTypeAndKeepImage(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	spec := VolumeSpec{Kind: "volume", ID: volA, ProjectID: "demo", VolumeType: "ssd"}
	if _, err := s.RegisterVolume(context.Background(), Registration{TransferID: "f1", Region: "RegionTwo", Image: "ferry-replica-r1",
		Spec: spec, VolumeType: "fast", KeepImage: true}); err != nil {
		t.Fatal(err)
	}
	if vt := f.managed[0]["volume_type"]; vt != "fast" {
		t.Errorf("volume_type of the manage: %v", vt)
	}
	if _, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t2", Region: "RegionTwo", Image: "ferry-t2", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.managed[1]["volume_type"]; ok {
		t.Errorf("a transfer's manage names a type: %v", f.managed[1])
	}

	f.manageTo = "error_managing"
	_, err := s.RegisterVolume(context.Background(), Registration{TransferID: "f3", Region: "RegionTwo", Image: "ferry-replica-r3", Spec: spec, KeepImage: true})
	id := fmt.Sprintf("00000000-0000-4000-8000-%012d", 3)
	if err == nil || !strings.Contains(err.Error(), "went to error_managing") {
		t.Errorf("error_managing: %v", err)
	}
	if containsPrefix(f.log, "DELETE /two/v3/volumes/") || strings.Join(f.actionLog(), ",") != id+" os-unmanage" {
		t.Errorf("kept image: requests %q, actions %q", f.log, f.actionLog())
	}
}

func containsPrefix(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}
