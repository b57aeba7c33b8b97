package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/config"
)

// fakeCloud is Keystone (tokens, roles, grants) and Cinder (volumes,
// manageable_volumes) in one server. Tokens are "tok-<project>".
type fakeCloud struct {
	srv *httptest.Server

	mu       sync.Mutex
	grants   map[string]bool // project → the service user holds admin there
	log      []string
	volumes  map[string]map[string]any
	manageTo string // status a managed volume reaches on its second GET
	managed  []map[string]any
	polls    map[string]int

	backups  map[string]map[string]any // "<one|two>/<id>" → backup (with "owner", "record")
	imported []map[string]any          // decoded records imported
	importTo string                    // status an imported backup reaches

	quota string // os-quota-sets answer (JSON); "" is a 403
}

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{grants: map[string]bool{}, volumes: map[string]map[string]any{}, polls: map[string]int{}, manageTo: "available",
		backups: map[string]map[string]any{}, importTo: "available"}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCloud) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, r.Method+" "+r.URL.Path+" "+r.Header.Get("X-Auth-Token"))
	w.Header().Set("Content-Type", "application/json")
	p := r.URL.Path
	switch {
	case p == "/v3/auth/tokens" && r.Method == http.MethodPost:
		var req struct {
			Auth struct {
				Scope struct {
					Project struct {
						ID   string `json:"id"`
						Name string `json:"name"`
					} `json:"project"`
				} `json:"scope"`
			} `json:"auth"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		project := req.Auth.Scope.Project.ID
		if project == "" {
			project = "service-project"
		} else if !f.grants[project] {
			w.WriteHeader(401)
			fmt.Fprint(w, `{"error": {"code": 401, "message": "no role on the project"}}`)
			return
		}
		w.Header().Set("X-Subject-Token", "tok-"+project)
		w.WriteHeader(201)
		u := f.srv.URL
		fmt.Fprintf(w, `{"token": {"expires_at": %q, "user": {"id": "ferry-id", "name": "ferry", "domain": {"id": "default"}},
			"project": {"id": %q, "name": "x", "domain": {"id": "default"}}, "roles": [{"id": "r-admin", "name": "admin"}],
			"catalog": [
			 {"type": "identity", "name": "keystone", "endpoints": [{"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "%s/v3"}]},
			 {"type": "volumev3", "name": "cinderv3", "endpoints": [
			  {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "%s/one/v3/%s"},
			  {"interface": "public", "region_id": "RegionTwo", "region": "RegionTwo", "url": "%s/two/v3/%s"}]}]}}`,
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339), project, u, u, project, u, project)
	case strings.Contains(p, "/v3/os-quota-sets/") && r.Method == http.MethodGet:
		if f.quota == "" || r.URL.Query().Get("usage") != "true" {
			w.WriteHeader(403)
			fmt.Fprint(w, `{"forbidden": {"code": 403, "message": "Policy doesn't allow it."}}`)
			return
		}
		fmt.Fprint(w, f.quota)
	case p == "/v3/roles" && r.Method == http.MethodGet:
		fmt.Fprint(w, `{"roles": [{"id": "r-admin", "name": "admin"}], "links": {}}`)
	case strings.HasPrefix(p, "/v3/projects/") && strings.HasSuffix(p, "/users/ferry-id/roles/r-admin"):
		project := strings.Split(p, "/")[3]
		switch r.Method {
		case http.MethodHead:
			if f.grants[project] {
				w.WriteHeader(204)
			} else {
				w.WriteHeader(404)
			}
		case http.MethodPut:
			f.grants[project] = true
			w.WriteHeader(204)
		case http.MethodDelete:
			delete(f.grants, project)
			w.WriteHeader(204)
		}
	case strings.HasPrefix(p, "/two/v3/manageable_volumes") && r.Method == http.MethodPost:
		var body map[string]map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		f.managed = append(f.managed, body["volume"])
		id := fmt.Sprintf("managed-%d", len(f.managed))
		f.volumes[id] = map[string]any{"id": id, "status": "creating", "size": 1}
		w.WriteHeader(202)
		_ = json.NewEncoder(w).Encode(map[string]any{"volume": f.volumes[id]})
	case strings.HasSuffix(p, "/v3/backups/import_record") && r.Method == http.MethodPost:
		var body struct {
			Record struct {
				Service string `json:"backup_service"`
				URL     []byte `json:"backup_url"`
			} `json:"backup-record"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		var rec map[string]any
		_ = json.Unmarshal(body.Record.URL, &rec)
		rec["_service"] = body.Record.Service
		f.imported = append(f.imported, rec)
		id, _ := rec["id"].(string)
		region := strings.Split(p, "/")[1]
		f.backups[region+"/"+id] = map[string]any{"id": id, "status": "creating", "owner": strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")}
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"backup": {"id": %q, "name": "x", "links": []}}`, id)
	case strings.Contains(p, "/v3/backups/"):
		parts := strings.Split(p, "/")
		region, id := parts[1], parts[4]
		b, ok := f.backups[region+"/"+id]
		tok := strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")
		if !ok || (b["owner"] != tok && tok != "admin" && tok != "service-project") {
			w.WriteHeader(404)
			fmt.Fprint(w, `{"itemNotFound": {"code": 404, "message": "Backup could not be found."}}`)
			return
		}
		if len(parts) == 6 && parts[5] == "export_record" {
			rec, _ := json.Marshal(b["record"])
			_ = json.NewEncoder(w).Encode(map[string]any{"backup-record": map[string]any{"backup_service": b["service"], "backup_url": rec}})
			return
		}
		if b["status"] == "creating" {
			b["status"] = f.importTo
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"backup": map[string]any{"id": id, "status": b["status"], "fail_reason": "driver said no"}})
	case strings.HasSuffix(p, "/v3/volumes/detail") && r.Method == http.MethodGet:
		// metadata={'k':'v'} (gophercloud's form, which Cinder parses)
		want := strings.NewReplacer("{", "", "}", "", "'", "").Replace(r.URL.Query().Get("metadata"))
		k, v, _ := strings.Cut(want, ":")
		tok := strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")
		out := []map[string]any{}
		for _, vol := range f.volumes {
			md, _ := vol["metadata"].(map[string]string)
			if vol["owner"] == tok && md[k] == v {
				out = append(out, map[string]any{"id": vol["id"], "status": vol["status"], "metadata": md})
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"volumes": out})
	case strings.HasSuffix(p, "/action") && strings.Contains(p, "/v3/volumes/") && r.Method == http.MethodPost:
		parts := strings.Split(p, "/")
		var body map[string]map[string]map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		if v, ok := f.volumes[parts[4]]; ok {
			v["image_metadata"] = body["os-set_image_metadata"]["metadata"]
		}
		fmt.Fprint(w, `{"metadata": {}}`)
	case strings.Contains(p, "/v3/volumes/"):
		id := p[strings.LastIndex(p, "/")+1:]
		v, ok := f.volumes[id]
		if !ok || (v["owner"] != nil && v["owner"] != strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-") && r.Header.Get("X-Auth-Token") != "tok-admin") {
			w.WriteHeader(404)
			fmt.Fprint(w, `{"itemNotFound": {"code": 404, "message": "Volume could not be found."}}`)
			return
		}
		if r.Method == http.MethodDelete {
			delete(f.volumes, id)
			w.WriteHeader(202)
			return
		}
		if strings.HasPrefix(id, "managed-") {
			f.polls[id]++
			if f.polls[id] >= 2 {
				v["status"] = f.manageTo
			}
		}
		out := map[string]any{}
		for k, val := range v {
			if k != "owner" {
				out[k] = val
			}
		}
		if r.Header.Get("X-Auth-Token") == "tok-admin" {
			out["os-vol-tenant-attr:tenant_id"] = v["owner"]
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"volume": out})
	default:
		w.WriteHeader(404)
		fmt.Fprintf(w, `{"itemNotFound": {"code": 404, "message": "no route %s %s"}}`, r.Method, p)
	}
}

func newService(t *testing.T, f *fakeCloud) *Service {
	s, err := New(config.KeystoneAuthtoken{AuthURL: f.srv.URL + "/v3", Username: "ferry", Password: "pw", ProjectName: "service",
		UserDomainName: "Default", ProjectDomainName: "Default", RegionName: "RegionOne"},
		config.Cinder{CatalogInfo: "volumev3::publicURL", VolumePools: map[string]string{"RegionOne": "volumes", "RegionTwo": "vols2"},
			BackupPools: map[string]string{"RegionOne": "backups", "RegionTwo": "backups2"}, VolumeBackupDriver: "cinder.backup.drivers.ceph.CephBackupDriver",
			BackendHosts: map[string]string{"RegionTwo": "c2@ceph#ceph"}, FinalizeTimeout: 10, OwnerRole: "admin"},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestResolveVolume(t *testing.T) {
	f := newFakeCloud(t)
	f.volumes["v1"] = map[string]any{"id": "v1", "status": "available", "size": 2, "name": "data", "description": "d",
		"metadata": map[string]string{"k": "v"}, "bootable": "true", "encrypted": false, "owner": "demo",
		"volume_image_metadata": map[string]string{"image_name": "debian-12"}}
	f.volumes["v2"] = map[string]any{"id": "v2", "status": "error", "size": 1, "owner": "demo"}
	f.volumes["v3"] = map[string]any{"id": "v3", "status": "in-use", "size": 1, "encrypted": true, "owner": "demo"}
	s := newService(t, f)
	ctx := context.Background()

	sv, err := s.ResolveVolume(ctx, "tok-demo", "demo", "RegionOne", "v1")
	if err != nil {
		t.Fatal(err)
	}
	want := SourceVolume{Spec: VolumeSpec{Kind: "volume", ID: "v1", Name: "data", Description: "d", SizeGiB: 2,
		Metadata: map[string]string{"k": "v"}, Bootable: true, ImageMetadata: map[string]string{"image_name": "debian-12"}, ProjectID: "demo"},
		Pool: "volumes", Image: "volume-v1"}
	if got, _ := json.Marshal(sv); string(got) != mustJSON(want) {
		t.Errorf("resolved %s, want %s", got, mustJSON(want))
	}
	// The caller's token went to Cinder, at the project-less v3 root.
	if !containsLine(f.log, "GET /one/v3/volumes/v1 tok-demo") {
		t.Errorf("requests: %q", f.log)
	}
	// An admin sees the owner.
	if sv, err := s.ResolveVolume(ctx, "tok-admin", "admin", "RegionOne", "v1"); err != nil || sv.Spec.ProjectID != "demo" {
		t.Errorf("admin: %+v %v", sv, err)
	}
	for _, tc := range []struct {
		token, region, id string
		want              error
		msg               string
	}{
		{"tok-alt", "RegionOne", "v1", ErrNotFound, "volume v1 could not be found in region RegionOne"},
		{"tok-demo", "RegionOne", "nope", ErrNotFound, "could not be found"},
		{"tok-demo", "RegionOne", "v2", ErrInvalid, "volume v2 is error; only an available or in-use volume can be moved"},
		{"tok-demo", "RegionOne", "v3", ErrInvalid, "volume v3 is encrypted"},
		{"tok-demo", "RegionNine", "v1", ErrNotConfigured, `region "RegionNine" has no Cinder volume pool`},
	} {
		_, err := s.ResolveVolume(ctx, tc.token, "x", tc.region, tc.id)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s %s %s: %v, want %v %q", tc.token, tc.region, tc.id, err, tc.want, tc.msg)
		}
	}
}

func TestRegisterVolumeGrantsManagesWaitsAndRevokes(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	var created string
	id, err := s.RegisterVolume(context.Background(), Registration{
		TransferID: "t1", Region: "RegionTwo", Image: "ferry-t1",
		Spec: VolumeSpec{Kind: "volume", ID: "v1", Name: "data", Description: "d", Bootable: true, Metadata: map[string]string{"k": "v"},
			ImageMetadata: map[string]string{"hw_disk_bus": "scsi"}, ProjectID: "demo"},
		Created: func(_ context.Context, id string) error { created = id; return nil },
	})
	if err != nil || id != "managed-1" || created != "managed-1" {
		t.Fatalf("RegisterVolume = %q, %v (created %q)", id, err, created)
	}
	want := map[string]any{"host": "c2@ceph#ceph", "ref": map[string]any{"source-name": "ferry-t1"}, "name": "data", "description": "d",
		"bootable": true, "metadata": map[string]any{"k": "v", "ferry_transfer_id": "t1", "ferry_source_volume_id": "v1"}}
	if got := mustJSON(f.managed[0]); got != mustJSON(want) {
		t.Errorf("manage body %s, want %s", got, mustJSON(want))
	}
	if md := fmt.Sprint(f.volumes["managed-1"]["image_metadata"]); md != "map[hw_disk_bus:scsi]" {
		t.Errorf("image metadata of the new volume: %s", md)
	}
	// Managed with a token of the owner's project; the grant is gone after.
	if !containsLine(f.log, "POST /two/v3/manageable_volumes tok-demo") || !containsLine(f.log, "PUT /v3/projects/demo/users/ferry-id/roles/r-admin tok-service-project") ||
		!containsLine(f.log, "DELETE /v3/projects/demo/users/ferry-id/roles/r-admin tok-service-project") || f.grants["demo"] {
		t.Errorf("requests: %q", f.log)
	}

	// A grant that was there before stays.
	f.grants["keep"] = true
	spec := VolumeSpec{Kind: "volume", ID: "v2", ProjectID: "keep"}
	if _, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t2", Region: "RegionTwo", Image: "ferry-t2", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if !f.grants["keep"] {
		t.Error("a pre-existing grant was removed")
	}

	// error_managing: the volume record is deleted, the error says where
	// the image is.
	f.manageTo = "error_managing"
	_, err = s.RegisterVolume(context.Background(), Registration{TransferID: "t3", Region: "RegionTwo", Image: "ferry-t3", Spec: VolumeSpec{Kind: "volume", ID: "v3", ProjectID: "demo"}})
	if err == nil || !strings.Contains(err.Error(), "went to error_managing") || strings.Count(err.Error(), "volume managed-3") != 1 || !strings.Contains(err.Error(), "the copied image is left in region RegionTwo, pool vols2, as ferry-t3") {
		t.Errorf("error_managing: %v", err)
	}
	if _, ok := f.volumes["managed-3"]; ok || f.grants["demo"] {
		t.Errorf("after a failed manage: volume kept %v, grant kept %v", ok, f.grants["demo"])
	}
	// No backend host for the region: nothing is asked.
	n := len(f.log)
	if _, err := s.RegisterVolume(context.Background(), Registration{Region: "RegionOne", Spec: spec}); !errors.Is(err, ErrNotConfigured) || len(f.log) != n {
		t.Errorf("no backend host: %v", err)
	}
}

// An attempt that died between Cinder's answer and recording the volume:
// the volume naming the transfer is found and waited for, not managed again.
func TestResumeFindsTheVolumeOfTheTransfer(t *testing.T) {
	f := newFakeCloud(t)
	f.grants["demo"] = true // the grant is still there too
	f.volumes["managed-7"] = map[string]any{"id": "managed-7", "status": "available", "owner": "demo",
		"metadata": map[string]string{"ferry_transfer_id": "t-7"}}
	f.volumes["other"] = map[string]any{"id": "other", "status": "available", "owner": "demo",
		"metadata": map[string]string{"ferry_transfer_id": "t-8"}}
	s := newService(t, f)
	id, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t-7", Region: "RegionTwo", Image: "ferry-t-7",
		Spec: VolumeSpec{Kind: "volume", ID: "v", ProjectID: "demo"}})
	if err != nil || id != "managed-7" || len(f.managed) != 0 {
		t.Errorf("resume: %q %v, %d manage calls", id, err, len(f.managed))
	}
}

func TestResumeWaitsForTheExistingVolume(t *testing.T) {
	f := newFakeCloud(t)
	f.volumes["managed-9"] = map[string]any{"id": "managed-9", "status": "creating"}
	s := newService(t, f)
	id, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t", Region: "RegionTwo", Image: "ferry-t",
		Spec: VolumeSpec{Kind: "volume", ID: "v", ProjectID: "demo"}, ExistingVolumeID: "managed-9"})
	if err != nil || id != "managed-9" || len(f.managed) != 0 {
		t.Errorf("resume: %q %v, %d manage calls", id, err, len(f.managed))
	}
}

func TestCatalogInfo(t *testing.T) {
	for _, v := range []string{"volumev3", "volumev3::sideways", ""} {
		if _, err := New(config.KeystoneAuthtoken{}, config.Cinder{CatalogInfo: v}, nil); err == nil {
			t.Errorf("catalog_info %q accepted", v)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

func cephBackup(id, parent, owner string) map[string]any {
	rec := map[string]any{"id": id, "volume_id": "v1", "container": "backups", "service_metadata": `{"base": "volume-v1.backup.b1"}`,
		"project_id": owner, "host": "one", "availability_zone": "nova", "service": "cinder.backup.drivers.ceph.CephBackupDriver", "size": 1}
	if parent != "" {
		rec["parent_id"] = parent
	} else {
		rec["parent_id"] = nil
	}
	return map[string]any{"id": id, "status": "available", "owner": owner, "record": rec, "service": "cinder.backup.drivers.ceph.CephBackupDriver"}
}

func TestResolveBackup(t *testing.T) {
	f := newFakeCloud(t)
	f.backups["one/b1"] = cephBackup("b1", "", "demo")
	f.backups["one/b2"] = cephBackup("b2", "b1", "demo")
	f.backups["one/b3"] = cephBackup("b3", "", "demo")
	f.backups["one/b3"]["status"] = "backing-up"
	f.backups["one/sw"] = cephBackup("sw", "", "demo")
	f.backups["one/sw"]["service"] = "cinder.backup.drivers.swift.SwiftBackupDriver"
	f.backups["one/dup"] = cephBackup("dup", "", "demo")
	f.backups["two/dup"] = cephBackup("dup", "", "demo")
	s := newService(t, f)
	ctx := context.Background()

	sb, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if sb.Pool != "backups" || sb.Image != "volume-v1.backup.b1" || sb.SnapshotPattern != "backup.b1.snap.*" ||
		sb.Spec.ProjectID != "demo" || sb.Spec.ParentID != "" || !strings.Contains(string(sb.Spec.Record), `"volume_id":"v1"`) {
		t.Errorf("resolved %+v", sb)
	}
	if !containsLine(f.log, "GET /one/v3/backups/b1 tok-demo") || !containsLine(f.log, "GET /one/v3/backups/b1/export_record tok-service-project") {
		t.Errorf("requests: %q", f.log)
	}
	for _, tc := range []struct {
		token, id string
		want      error
		msg       string
	}{
		{"tok-alt", "b1", ErrNotFound, "backup b1 could not be found in region RegionOne"},
		{"tok-demo", "b2", ErrInvalid, "backup b2 is incremental: move its parent backup b1 to RegionTwo first"},
		{"tok-demo", "b3", ErrInvalid, "backup b3 is backing-up; only an available backup can be moved"},
		{"tok-demo", "sw", ErrInvalid, "backup sw was made by cinder.backup.drivers.swift.SwiftBackupDriver"},
		{"tok-demo", "dup", ErrConflict, "backup dup already exists in region RegionTwo"},
	} {
		_, err := s.ResolveBackup(ctx, tc.token, "demo", "RegionOne", "RegionTwo", tc.id)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s %s: %v, want %v %q", tc.token, tc.id, err, tc.want, tc.msg)
		}
	}
	// Once its parent is in RegionTwo, the incremental can go.
	f.backups["two/b1"] = cephBackup("b1", "", "demo")
	if sb, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "b2"); err != nil || sb.Spec.ParentID != "b1" {
		t.Errorf("incremental after its parent: %+v %v", sb, err)
	}
}

func TestRegisterBackupImportsAdaptedRecord(t *testing.T) {
	f := newFakeCloud(t)
	f.backups["one/b1"] = cephBackup("b1", "", "demo")
	s := newService(t, f)
	ctx := context.Background()
	sb, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "b1")
	if err != nil {
		t.Fatal(err)
	}
	var created string
	id, err := s.RegisterBackup(ctx, BackupRegistration{TransferID: "t1", Region: "RegionTwo", Pool: "backups2", Image: sb.Image, Spec: sb.Spec,
		Created: func(_ context.Context, id string) error { created = id; return nil }})
	if err != nil || id != "b1" || created != "b1" {
		t.Fatalf("RegisterBackup = %q, %v (created %q)", id, err, created)
	}
	rec := f.imported[0]
	if rec["container"] != "backups2" || rec["host"] != nil || rec["availability_zone"] != nil || rec["service"] != nil ||
		rec["id"] != "b1" || rec["_service"] != "cinder.backup.drivers.ceph.CephBackupDriver" || rec["service_metadata"] != `{"base": "volume-v1.backup.b1"}` {
		t.Errorf("imported record %v", rec)
	}
	// In the owner's project, with the grant gone afterwards.
	if f.backups["two/b1"]["owner"] != "demo" || f.grants["demo"] {
		t.Errorf("imported backup owner %v, grant left %v", f.backups["two/b1"]["owner"], f.grants["demo"])
	}
	// An import that ends in error says what is left where.
	f.importTo = "error"
	f.backups["one/b9"] = cephBackup("b9", "", "demo")
	sb, err = s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "b9")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.RegisterBackup(ctx, BackupRegistration{Region: "RegionTwo", Pool: "backups2", Image: sb.Image, Spec: sb.Spec})
	if err == nil || !strings.Contains(err.Error(), "went to error: driver said no") ||
		!strings.Contains(err.Error(), "the imported record of backup b9 (project demo) and the copied data stays in region RegionTwo, pool backups2, image volume-v1.backup.b1") {
		t.Errorf("failed import: %v", err)
	}
}

// An attempt that stopped after the import: the backup at the destination
// is waited for, not imported again.
func TestRegisterBackupResumes(t *testing.T) {
	f := newFakeCloud(t)
	f.backups["two/b5"] = map[string]any{"id": "b5", "status": "available", "owner": "demo"}
	s := newService(t, f)
	var created bool
	id, err := s.RegisterBackup(context.Background(), BackupRegistration{Region: "RegionTwo", Pool: "backups2", Image: "img",
		Spec:    BackupSpec{Kind: "backup", ID: "b5", ProjectID: "demo", Service: "ceph", Record: []byte(`{"id":"b5"}`)},
		Created: func(context.Context, string) error { created = true; return nil }})
	if err != nil || id != "b5" || len(f.imported) != 0 || created {
		t.Errorf("resume: %q %v, %d imports, created %v", id, err, len(f.imported), created)
	}
}

type memLedger struct {
	mu  sync.Mutex
	set map[string]bool
	log []string
}

func (l *memLedger) Record(_ context.Context, p string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.set[p] = true
	l.log = append(l.log, "record "+p)
	return nil
}

func (l *memLedger) Recorded(_ context.Context, p string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.set[p], nil
}

func (l *memLedger) Clear(_ context.Context, p string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.set, p)
	l.log = append(l.log, "clear "+p)
	return nil
}

// A grant a stopped process left (in the ledger) is removed by the next
// registration into that project; an operator's (not in it) stays.
func TestGrantLedger(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	led := &memLedger{set: map[string]bool{"demo": true}}
	s.Ledger = led
	f.grants["demo"] = true // left by a crashed registration
	f.grants["ops"] = true  // an operator's
	for _, p := range []string{"demo", "ops", "fresh"} {
		if _, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t-" + p, Region: "RegionTwo", Image: "ferry-" + p,
			Spec: VolumeSpec{Kind: "volume", ID: "v", ProjectID: p}}); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if f.grants["demo"] || !f.grants["ops"] || f.grants["fresh"] {
		t.Errorf("grants after: demo %v (want false), ops %v (want true), fresh %v (want false)", f.grants["demo"], f.grants["ops"], f.grants["fresh"])
	}
	if len(led.set) != 0 || strings.Join(led.log, ",") != "record demo,clear demo,record fresh,clear fresh" {
		t.Errorf("ledger %v, log %v", led.set, led.log)
	}
}

// The owner's volumes and gigabytes quotas in the destination, used and
// reserved counted; a quota that cannot be read is no refusal.
func TestCheckVolumeQuota(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	ctx := context.Background()
	usage := func(volUsed, volLimit, gbUsed, gbReserved, gbLimit int) string {
		return fmt.Sprintf(`{"quota_set": {"id": "demo", "volumes": {"in_use": %d, "limit": %d, "reserved": 0},
			"gigabytes": {"in_use": %d, "limit": %d, "reserved": %d}}}`, volUsed, volLimit, gbUsed, gbLimit, gbReserved)
	}
	for _, tc := range []struct {
		name  string
		quota string
		size  int
		full  bool
	}{
		{"room", usage(3, 10, 10, 0, 1000), 5, false},
		{"unlimited", usage(3, -1, 10, 0, -1), 500, false},
		{"no volume left", usage(10, 10, 10, 0, 1000), 1, true},
		{"not enough gigabytes", usage(3, 10, 990, 5, 1000), 6, true},
		{"exactly enough", usage(3, 10, 990, 5, 1000), 5, false},
		{"unreadable", "", 5000, false},
	} {
		f.mu.Lock()
		f.quota = tc.quota
		f.mu.Unlock()
		err := s.CheckVolumeQuota(ctx, "tok-demo", "RegionTwo", "demo", tc.size)
		if errors.Is(err, ErrQuota) != tc.full || (err != nil && !tc.full) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if !containsLine(f.log, "GET /two/v3/os-quota-sets/demo tok-demo") {
		t.Errorf("the destination's quota was not asked with the caller's token: %v", f.log)
	}
}
