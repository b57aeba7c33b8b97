package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
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

	quota       string                 // os-quota-sets answer (JSON); "" is a 403
	hangVolumes bool                   // GET of a volume never answers (until the client gives up)
	actions     []string               // "<volume id> <action>" of the volume actions asked for
	hookAction  func(v map[string]any) // called with the volume before an action
}

// seesAll: the token is an admin's (the admin user's, or Ferry's service
// user in its own project, role admin): Cinder shows it every project's
// volumes, with their project.
func seesAll(tok string) bool { return tok == "tok-admin" || tok == "tok-service-project" }

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{grants: map[string]bool{}, volumes: map[string]map[string]any{}, polls: map[string]int{}, manageTo: "available",
		backups: map[string]map[string]any{}, importTo: "available"}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCloud) serve(w http.ResponseWriter, r *http.Request) {
	if f.hangVolumes && strings.Contains(r.URL.Path, "/v3/volumes/") {
		<-r.Context().Done()
		return
	}
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
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", len(f.managed))
		f.volumes[id] = map[string]any{"id": id, "status": "creating", "size": 1, "user_id": "ferry-id",
			"created_at": time.Now().UTC().Format("2006-01-02T15:04:05.000000"), "owner": strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")}
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
	case strings.Contains(p, "/v3/groups/") && r.Method == http.MethodGet:
		// A group of the token's project, its volumes with list_volume.
		id := p[strings.LastIndex(p, "/")+1:]
		tok := strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")
		if tok != "demo" || id != "22222222-0000-4000-8000-000000000001" {
			w.WriteHeader(404)
			fmt.Fprintf(w, `{"itemNotFound": {"code": 404, "message": "Group %s could not be found."}}`, id)
			return
		}
		g := map[string]any{"id": id, "name": "app"}
		if r.URL.Query().Get("list_volume") == "True" {
			g["volumes"] = []string{"11111111-0000-4000-8000-000000000002", "11111111-0000-4000-8000-000000000001"}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"group": g})
	case strings.HasSuffix(p, "/v3/volumes/detail") && r.Method == http.MethodGet:
		// The token's project's volumes; created_at=gte:<time> (3.60).
		tok := strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")
		var since time.Time
		if c := r.URL.Query().Get("created_at"); c != "" {
			t, err := time.Parse("2006-01-02T15:04:05", strings.TrimPrefix(c, "gte:"))
			if err != nil || !strings.HasPrefix(c, "gte:") {
				w.WriteHeader(400)
				fmt.Fprintf(w, `{"badRequest": {"code": 400, "message": "created_at %s"}}`, c)
				return
			}
			since = t
		}
		out := []map[string]any{}
		for _, vol := range f.volumes {
			created, _ := time.Parse("2006-01-02T15:04:05.000000", fmt.Sprint(vol["created_at"]))
			if vol["owner"] == tok && !created.Before(since) {
				out = append(out, map[string]any{"id": vol["id"], "status": vol["status"], "metadata": vol["metadata"],
					"user_id": vol["user_id"], "created_at": vol["created_at"]})
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"volumes": out})
	case strings.HasSuffix(p, "/action") && strings.Contains(p, "/v3/volumes/") && r.Method == http.MethodPost:
		parts := strings.Split(p, "/")
		var body map[string]json.RawMessage
		_ = json.NewDecoder(r.Body).Decode(&body)
		tok := strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-")
		v, ok := f.volumes[parts[4]]
		if !ok || (v["owner"] != nil && v["owner"] != tok && !seesAll("tok-"+tok)) {
			w.WriteHeader(404)
			fmt.Fprint(w, `{"itemNotFound": {"code": 404, "message": "Volume could not be found."}}`)
			return
		}
		if f.hookAction != nil {
			f.hookAction(v)
		}
		for action, arg := range body {
			f.actions = append(f.actions, parts[4]+" "+action)
			switch action {
			case "os-set_image_metadata":
				var a struct{ Metadata map[string]string }
				_ = json.Unmarshal(arg, &a)
				v["image_metadata"] = a.Metadata
				fmt.Fprint(w, `{"metadata": {}}`)
			case "os-update_readonly_flag":
				var a struct{ Readonly *bool }
				if err := json.Unmarshal(arg, &a); err != nil || a.Readonly == nil || v["status"] != "available" {
					w.WriteHeader(400)
					fmt.Fprint(w, `{"badRequest": {"code": 400, "message": "Invalid volume: Volume status must be available to update readonly flag."}}`)
					return
				}
				md, _ := v["metadata"].(map[string]string)
				if md == nil {
					md = map[string]string{}
				}
				md["readonly"] = map[bool]string{true: "True", false: "False"}[*a.Readonly]
				v["metadata"] = md
				w.WriteHeader(202)
			case "os-unmanage":
				if st := v["status"]; !seesAll("tok-"+tok) || (st != "available" && st != "error" && st != "error_managing") || v["attachments"] != nil {
					w.WriteHeader(400)
					fmt.Fprint(w, `{"badRequest": {"code": 400, "message": "Invalid volume: not unmanaged."}}`)
					return
				}
				v["status"] = "unmanaging"
				w.WriteHeader(202)
			}
		}
	case strings.Contains(p, "/v3/volumes/"):
		id := p[strings.LastIndex(p, "/")+1:]
		v, ok := f.volumes[id]
		if ok && v["status"] == "unmanaging" && f.polls[id] > 0 {
			delete(f.volumes, id) // the unmanage is done on the second GET
			ok = false
		}
		if !ok || (v["owner"] != nil && v["owner"] != strings.TrimPrefix(r.Header.Get("X-Auth-Token"), "tok-") && !seesAll(r.Header.Get("X-Auth-Token"))) {
			w.WriteHeader(404)
			fmt.Fprint(w, `{"itemNotFound": {"code": 404, "message": "Volume could not be found."}}`)
			return
		}
		if r.Method == http.MethodDelete {
			delete(f.volumes, id)
			w.WriteHeader(202)
			return
		}
		if v["status"] == "unmanaging" {
			f.polls[id]++
		} else if strings.HasPrefix(id, "00000000-") {
			f.polls[id]++
			if f.polls[id] >= 2 && v["status"] == "creating" {
				v["status"] = f.manageTo
			}
		}
		out := map[string]any{}
		for k, val := range v {
			if k != "owner" {
				out[k] = val
			}
		}
		if seesAll(r.Header.Get("X-Auth-Token")) {
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
	f.volumes["11111111-0000-4000-8000-000000000001"] = map[string]any{"id": "11111111-0000-4000-8000-000000000001", "status": "available", "size": 2, "name": "data", "description": "d",
		"metadata": map[string]string{"k": "v", "readonly": "False", "attached_mode": "rw"}, "bootable": "true", "encrypted": false, "owner": "demo",
		"volume_image_metadata": map[string]string{"image_name": "debian-12"}, "volume_type": "ssd"}
	f.volumes["11111111-0000-4000-8000-000000000002"] = map[string]any{"id": "11111111-0000-4000-8000-000000000002", "status": "error", "size": 1, "owner": "demo"}
	f.volumes["11111111-0000-4000-8000-000000000003"] = map[string]any{"id": "11111111-0000-4000-8000-000000000003", "status": "in-use", "size": 1, "encrypted": true, "owner": "demo"}
	s := newService(t, f)
	ctx := context.Background()

	sv, err := s.ResolveVolume(ctx, "tok-demo", "demo", "RegionOne", "11111111-0000-4000-8000-000000000001")
	if err != nil {
		t.Fatal(err)
	}
	// The spec has the volume's type; the admin metadata Cinder shows
	// among the metadata (readonly, attached_mode) stays behind.
	want := SourceVolume{Spec: VolumeSpec{Kind: "volume", ID: "11111111-0000-4000-8000-000000000001", Name: "data", Description: "d", SizeGiB: 2,
		Metadata: map[string]string{"k": "v"}, Bootable: true, ImageMetadata: map[string]string{"image_name": "debian-12"}, ProjectID: "demo", VolumeType: "ssd"},
		Pool: "volumes", Image: "volume-11111111-0000-4000-8000-000000000001"}
	if got, _ := json.Marshal(sv); string(got) != mustJSON(want) {
		t.Errorf("resolved %s, want %s", got, mustJSON(want))
	}
	// The caller's token went to Cinder, at the project-less 11111111-0000-4000-8000-000000000003 root.
	if !containsLine(f.log, "GET /one/v3/volumes/11111111-0000-4000-8000-000000000001 tok-demo") {
		t.Errorf("requests: %q", f.log)
	}
	// An admin sees the owner.
	if sv, err := s.ResolveVolume(ctx, "tok-admin", "admin", "RegionOne", "11111111-0000-4000-8000-000000000001"); err != nil || sv.Spec.ProjectID != "demo" {
		t.Errorf("admin: %+v %v", sv, err)
	}
	for _, tc := range []struct {
		token, region, id string
		want              error
		msg               string
	}{
		{"tok-alt", "RegionOne", "11111111-0000-4000-8000-000000000001", ErrNotFound, "volume 11111111-0000-4000-8000-000000000001 could not be found in region RegionOne"},
		{"tok-demo", "RegionOne", "33333333-0000-4000-8000-000000000000", ErrNotFound, "could not be found"},
		{"tok-demo", "RegionOne", "11111111-0000-4000-8000-000000000002", ErrInvalid, "volume 11111111-0000-4000-8000-000000000002 is error; only an available or in-use volume can be moved"},
		{"tok-demo", "RegionOne", "11111111-0000-4000-8000-000000000003", ErrInvalid, "volume 11111111-0000-4000-8000-000000000003 is encrypted"},
		{"tok-demo", "RegionNine", "11111111-0000-4000-8000-000000000001", ErrNotConfigured, `region "RegionNine" has no Cinder volume pool`},
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
		Spec: VolumeSpec{Kind: "volume", ID: "11111111-0000-4000-8000-000000000001", Name: "data", Description: "d", Bootable: true, Metadata: map[string]string{"k": "v"},
			ImageMetadata: map[string]string{"hw_disk_bus": "scsi"}, ProjectID: "demo"},
		Created: func(_ context.Context, id string) error { created = id; return nil },
	})
	if err != nil || id != "00000000-0000-4000-8000-000000000001" || created != "00000000-0000-4000-8000-000000000001" {
		t.Fatalf("RegisterVolume = %q, %v (created %q)", id, err, created)
	}
	want := map[string]any{"host": "c2@ceph#ceph", "ref": map[string]any{"source-name": "ferry-t1"}, "name": "data", "description": "d",
		"bootable": true, "metadata": map[string]any{"k": "v", "ferry_transfer_id": "t1", "ferry_source_volume_id": "11111111-0000-4000-8000-000000000001"}}
	if got := mustJSON(f.managed[0]); got != mustJSON(want) {
		t.Errorf("manage body %s, want %s", got, mustJSON(want))
	}
	if md := fmt.Sprint(f.volumes["00000000-0000-4000-8000-000000000001"]["image_metadata"]); md != "map[hw_disk_bus:scsi]" {
		t.Errorf("image metadata of the new volume: %s", md)
	}
	// Managed with a token of the owner's project; the grant is gone after.
	if !containsLine(f.log, "POST /two/v3/manageable_volumes tok-demo") || !containsLine(f.log, "PUT /v3/projects/demo/users/ferry-id/roles/r-admin tok-service-project") ||
		!containsLine(f.log, "DELETE /v3/projects/demo/users/ferry-id/roles/r-admin tok-service-project") || f.grants["demo"] {
		t.Errorf("requests: %q", f.log)
	}

	// A grant that was there before stays.
	f.grants["keep"] = true
	spec := VolumeSpec{Kind: "volume", ID: "11111111-0000-4000-8000-000000000002", ProjectID: "keep"}
	if _, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t2", Region: "RegionTwo", Image: "ferry-t2", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if !f.grants["keep"] {
		t.Error("a pre-existing grant was removed")
	}

	// error_managing: the volume record is deleted, the error says where
	// the image is.
	f.manageTo = "error_managing"
	_, err = s.RegisterVolume(context.Background(), Registration{TransferID: "t3", Region: "RegionTwo", Image: "ferry-t3", Spec: VolumeSpec{Kind: "volume", ID: "11111111-0000-4000-8000-000000000003", ProjectID: "demo"}})
	if err == nil || !strings.Contains(err.Error(), "went to error_managing") || strings.Count(err.Error(), "volume 00000000-0000-4000-8000-000000000003") != 1 || !strings.Contains(err.Error(), "the copied image is left in region RegionTwo, pool vols2, as ferry-t3") {
		t.Errorf("error_managing: %v", err)
	}
	if _, ok := f.volumes["00000000-0000-4000-8000-000000000003"]; ok || f.grants["demo"] {
		t.Errorf("after a failed manage: volume kept %v, grant kept %v", ok, f.grants["demo"])
	}
	// No backend host for the region: nothing is asked.
	n := len(f.log)
	if _, err := s.RegisterVolume(context.Background(), Registration{Region: "RegionOne", Spec: spec}); !errors.Is(err, ErrNotConfigured) || len(f.log) != n {
		t.Errorf("no backend host: %v", err)
	}
}

// An attempt that died between its manage-existing request and the
// ledger's record of the answer: the volume that request made (created by
// the service user while it ran) is taken and waited for, not managed
// again. Metadata that names the transfer is never trusted: a project
// member can set it on any volume.
func TestResumeFindsTheVolumeOfTheAttempt(t *testing.T) {
	at := time.Now().Add(-time.Minute).UTC()
	stamp := func(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000") }
	for _, tc := range []struct {
		name    string
		volumes map[string]map[string]any
		want    string // the volume taken; "" a new manage
		manages int
		errs    string
	}{
		{"the attempt's volume", map[string]map[string]any{
			"00000000-0000-4000-8000-000000000007": {"user_id": "ferry-id", "created_at": stamp(at.Add(300 * time.Millisecond))},
		}, "00000000-0000-4000-8000-000000000007", 0, ""},
		{"a member's volume naming the transfer is not taken", map[string]map[string]any{
			"55555555-0000-4000-8000-000000000001": {"user_id": "demo-user", "created_at": stamp(at.Add(time.Second)),
				"metadata": map[string]string{"ferry_transfer_id": "t-7"}},
		}, "00000000-0000-4000-8000-000000000001", 1, ""},
		{"Ferry's volume from before the attempt is not taken", map[string]map[string]any{
			"55555555-0000-4000-8000-000000000002": {"user_id": "ferry-id", "created_at": stamp(at.Add(-time.Hour)),
				"metadata": map[string]string{"ferry_transfer_id": "t-7"}},
		}, "00000000-0000-4000-8000-000000000001", 1, ""},
		{"two candidates: none is taken, nothing is deleted", map[string]map[string]any{
			"55555555-0000-4000-8000-000000000003": {"user_id": "ferry-id", "created_at": stamp(at.Add(time.Second))},
			"55555555-0000-4000-8000-000000000004": {"user_id": "ferry-id", "created_at": stamp(at.Add(2 * time.Second))},
		}, "", 0, "2 volumes of Ferry's service user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCloud(t)
			f.grants["demo"] = true // the grant is still there too
			for id, v := range tc.volumes {
				v["id"], v["status"], v["owner"] = id, "available", "demo"
				f.volumes[id] = v
			}
			s := newService(t, f)
			var created string
			id, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t-7", Region: "RegionTwo", Image: "ferry-t-7",
				Spec: VolumeSpec{Kind: "volume", ID: "v", ProjectID: "demo"}, AttemptedAt: at,
				Created: func(_ context.Context, id string) error { created = id; return nil }})
			if tc.errs != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errs) || len(f.volumes) != len(tc.volumes) {
					t.Errorf("resume: %q %v, %d volumes left", id, err, len(f.volumes))
				}
				return
			}
			if err != nil || id != tc.want || created != tc.want || len(f.managed) != tc.manages {
				t.Errorf("resume: %q %v (created %q), %d manage calls; want %q, %d", id, err, created, len(f.managed), tc.want, tc.manages)
			}
			for vid := range tc.volumes {
				if _, ok := f.volumes[vid]; !ok {
					t.Errorf("volume %s was deleted", vid)
				}
			}
		})
	}
}

// Before its manage-existing request, a registration records the time in
// the ledger (Attempting), and only then asks Cinder.
func TestRegisterRecordsTheAttemptFirst(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	var order []string
	var at time.Time
	_, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t", Region: "RegionTwo", Image: "ferry-t",
		Spec: VolumeSpec{Kind: "volume", ID: "v", ProjectID: "demo"},
		Attempting: func(_ context.Context, t time.Time) error {
			at = t
			f.mu.Lock()
			order = append(order, fmt.Sprintf("attempting after %d manage calls", len(f.managed)))
			f.mu.Unlock()
			return nil
		},
		Created: func(context.Context, string) error { order = append(order, "created"); return nil }})
	if err != nil || strings.Join(order, ",") != "attempting after 0 manage calls,created" || time.Since(at) > time.Minute {
		t.Errorf("register: %v, order %q, at %v", err, order, at)
	}
	// A ledger that cannot record: Cinder is not asked.
	n := len(f.managed)
	_, err = s.RegisterVolume(context.Background(), Registration{TransferID: "t2", Region: "RegionTwo", Image: "ferry-t2",
		Spec:       VolumeSpec{Kind: "volume", ID: "v", ProjectID: "demo"},
		Attempting: func(context.Context, time.Time) error { return errors.New("database down") }})
	if err == nil || len(f.managed) != n {
		t.Errorf("ledger down: %v, %d manage calls", err, len(f.managed)-n)
	}
}

// Ids that would address other Cinder resources never reach Cinder.
func TestIDsAreValidatedBeforeCinder(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	ctx := context.Background()
	for _, id := range []string{"../../v3/volumes/detail", "detail?all_tenants=1", "..", "a\nb", "%zz", "", strings.Repeat("a", 65536),
		"{11111111-0000-4000-8000-000000000001}", "11111111000040008000000000000001", "11111111-0000-4000-8000-00000000000G"} {
		n := len(f.log)
		if _, err := s.ResolveVolume(ctx, "tok-demo", "demo", "RegionOne", id); !errors.Is(err, ErrInvalid) {
			t.Errorf("volume %.40q: %v", id, err)
		}
		if _, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", id); !errors.Is(err, ErrInvalid) {
			t.Errorf("backup %.40q: %v", id, err)
		}
		if len(f.log) != n {
			t.Errorf("%.40q reached Cinder: %q", id, f.log[n:])
		}
	}
	if p, err := pathID("volume", "11111111-0000-4000-8000-000000000001"); err != nil || p != "11111111-0000-4000-8000-000000000001" {
		t.Errorf("pathID of a UUID: %q %v", p, err)
	}
}

// Registrations into one project take turns; a waiting one gives up with
// its context, and no entry is left behind.
func TestKeyedLock(t *testing.T) {
	var k keyedLock
	unlock, err := k.lock(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	other, err := k.lock(context.Background(), "q")
	if err != nil {
		t.Fatal("another key waited")
	}
	other()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := k.lock(ctx, "p"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second holder of p: %v", err)
	}
	got := make(chan struct{})
	go func() {
		u, err := k.lock(context.Background(), "p")
		if err == nil {
			u()
		}
		close(got)
	}()
	time.Sleep(20 * time.Millisecond)
	unlock()
	select {
	case <-got:
	case <-time.After(2 * time.Second):
		t.Fatal("the waiter never got p")
	}
	if k.len() != 0 {
		t.Errorf("%d keys left", k.len())
	}
}

func TestResumeWaitsForTheExistingVolume(t *testing.T) {
	f := newFakeCloud(t)
	f.volumes["00000000-0000-4000-8000-000000000009"] = map[string]any{"id": "00000000-0000-4000-8000-000000000009", "status": "creating"}
	s := newService(t, f)
	id, err := s.RegisterVolume(context.Background(), Registration{TransferID: "t", Region: "RegionTwo", Image: "ferry-t",
		Spec: VolumeSpec{Kind: "volume", ID: "v", ProjectID: "demo"}, ExistingVolumeID: "00000000-0000-4000-8000-000000000009"})
	if err != nil || id != "00000000-0000-4000-8000-000000000009" || len(f.managed) != 0 {
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
	rec := map[string]any{"id": id, "volume_id": "11111111-0000-4000-8000-000000000001", "container": "backups", "service_metadata": `{"base": "volume-v1.backup.22222222-0000-4000-8000-000000000001"}`,
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
	f.backups["one/22222222-0000-4000-8000-000000000001"] = cephBackup("22222222-0000-4000-8000-000000000001", "", "demo")
	f.backups["one/22222222-0000-4000-8000-000000000002"] = cephBackup("22222222-0000-4000-8000-000000000002", "22222222-0000-4000-8000-000000000001", "demo")
	f.backups["one/22222222-0000-4000-8000-000000000003"] = cephBackup("22222222-0000-4000-8000-000000000003", "", "demo")
	f.backups["one/22222222-0000-4000-8000-000000000003"]["status"] = "backing-up"
	f.backups["one/22222222-0000-4000-8000-0000000000aa"] = cephBackup("22222222-0000-4000-8000-0000000000aa", "", "demo")
	f.backups["one/22222222-0000-4000-8000-0000000000aa"]["service"] = "cinder.backup.drivers.swift.SwiftBackupDriver"
	f.backups["one/22222222-0000-4000-8000-0000000000bb"] = cephBackup("22222222-0000-4000-8000-0000000000bb", "", "demo")
	f.backups["two/22222222-0000-4000-8000-0000000000bb"] = cephBackup("22222222-0000-4000-8000-0000000000bb", "", "demo")
	s := newService(t, f)
	ctx := context.Background()

	sb, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "22222222-0000-4000-8000-000000000001")
	if err != nil {
		t.Fatal(err)
	}
	if sb.Pool != "backups" || sb.Image != "volume-v1.backup.22222222-0000-4000-8000-000000000001" || sb.SnapshotPattern != "backup.22222222-0000-4000-8000-000000000001.snap.*" ||
		sb.Spec.ProjectID != "demo" || sb.Spec.ParentID != "" || !strings.Contains(string(sb.Spec.Record), `"volume_id":"11111111-0000-4000-8000-000000000001"`) {
		t.Errorf("resolved %+v", sb)
	}
	if !containsLine(f.log, "GET /one/v3/backups/22222222-0000-4000-8000-000000000001 tok-demo") || !containsLine(f.log, "GET /one/v3/backups/22222222-0000-4000-8000-000000000001/export_record tok-service-project") {
		t.Errorf("requests: %q", f.log)
	}
	for _, tc := range []struct {
		token, id string
		want      error
		msg       string
	}{
		{"tok-alt", "22222222-0000-4000-8000-000000000001", ErrNotFound, "backup 22222222-0000-4000-8000-000000000001 could not be found in region RegionOne"},
		{"tok-demo", "22222222-0000-4000-8000-000000000002", ErrInvalid, "backup 22222222-0000-4000-8000-000000000002 is incremental: move its parent backup 22222222-0000-4000-8000-000000000001 to RegionTwo first"},
		{"tok-demo", "22222222-0000-4000-8000-000000000003", ErrInvalid, "backup 22222222-0000-4000-8000-000000000003 is backing-up; only an available backup can be moved"},
		{"tok-demo", "22222222-0000-4000-8000-0000000000aa", ErrInvalid, "backup 22222222-0000-4000-8000-0000000000aa was made by cinder.backup.drivers.swift.SwiftBackupDriver"},
		{"tok-demo", "22222222-0000-4000-8000-0000000000bb", ErrConflict, "backup 22222222-0000-4000-8000-0000000000bb already exists in region RegionTwo"},
	} {
		_, err := s.ResolveBackup(ctx, tc.token, "demo", "RegionOne", "RegionTwo", tc.id)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s %s: %v, want %v %q", tc.token, tc.id, err, tc.want, tc.msg)
		}
	}
	// Once its parent is in RegionTwo, the incremental can go.
	f.backups["two/22222222-0000-4000-8000-000000000001"] = cephBackup("22222222-0000-4000-8000-000000000001", "", "demo")
	if sb, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "22222222-0000-4000-8000-000000000002"); err != nil || sb.Spec.ParentID != "22222222-0000-4000-8000-000000000001" {
		t.Errorf("incremental after its parent: %+v %v", sb, err)
	}
}

func TestRegisterBackupImportsAdaptedRecord(t *testing.T) {
	f := newFakeCloud(t)
	f.backups["one/22222222-0000-4000-8000-000000000001"] = cephBackup("22222222-0000-4000-8000-000000000001", "", "demo")
	s := newService(t, f)
	ctx := context.Background()
	sb, err := s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "22222222-0000-4000-8000-000000000001")
	if err != nil {
		t.Fatal(err)
	}
	var created string
	id, err := s.RegisterBackup(ctx, BackupRegistration{TransferID: "t1", Region: "RegionTwo", Pool: "backups2", Image: sb.Image, Spec: sb.Spec,
		Created: func(_ context.Context, id string) error { created = id; return nil }})
	if err != nil || id != "22222222-0000-4000-8000-000000000001" || created != "22222222-0000-4000-8000-000000000001" {
		t.Fatalf("RegisterBackup = %q, %v (created %q)", id, err, created)
	}
	rec := f.imported[0]
	if rec["container"] != "backups2" || rec["host"] != nil || rec["availability_zone"] != nil || rec["service"] != nil ||
		rec["id"] != "22222222-0000-4000-8000-000000000001" || rec["_service"] != "cinder.backup.drivers.ceph.CephBackupDriver" || rec["service_metadata"] != `{"base": "volume-v1.backup.22222222-0000-4000-8000-000000000001"}` {
		t.Errorf("imported record %v", rec)
	}
	// In the owner's project, with the grant gone afterwards.
	if f.backups["two/22222222-0000-4000-8000-000000000001"]["owner"] != "demo" || f.grants["demo"] {
		t.Errorf("imported backup owner %v, grant left %v", f.backups["two/22222222-0000-4000-8000-000000000001"]["owner"], f.grants["demo"])
	}
	// An import that ends in error says what is left where.
	f.importTo = "error"
	f.backups["one/22222222-0000-4000-8000-000000000009"] = cephBackup("22222222-0000-4000-8000-000000000009", "", "demo")
	sb, err = s.ResolveBackup(ctx, "tok-demo", "demo", "RegionOne", "RegionTwo", "22222222-0000-4000-8000-000000000009")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.RegisterBackup(ctx, BackupRegistration{Region: "RegionTwo", Pool: "backups2", Image: sb.Image, Spec: sb.Spec})
	if err == nil || !strings.Contains(err.Error(), "went to error: driver said no") ||
		!strings.Contains(err.Error(), "the imported record of backup 22222222-0000-4000-8000-000000000009 (project demo) and the copied data stays in region RegionTwo, pool backups2, image volume-v1.backup.22222222-0000-4000-8000-000000000001") {
		t.Errorf("failed import: %v", err)
	}
}

// An attempt that stopped after the import: the backup at the destination
// is waited for, not imported again.
func TestRegisterBackupResumes(t *testing.T) {
	f := newFakeCloud(t)
	f.backups["two/22222222-0000-4000-8000-000000000005"] = map[string]any{"id": "22222222-0000-4000-8000-000000000005", "status": "available", "owner": "demo"}
	s := newService(t, f)
	var created bool
	id, err := s.RegisterBackup(context.Background(), BackupRegistration{Region: "RegionTwo", Pool: "backups2", Image: "img",
		Spec:    BackupSpec{Kind: "backup", ID: "22222222-0000-4000-8000-000000000005", ProjectID: "demo", Service: "ceph", Record: []byte(`{"id":"22222222-0000-4000-8000-000000000005"}`)},
		Created: func(context.Context, string) error { created = true; return nil }})
	if err != nil || id != "22222222-0000-4000-8000-000000000005" || len(f.imported) != 0 || created {
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

// A Cinder that does not answer costs a request [cinder] timeout, not
// forever (before, Ferry's Cinder clients had no timeout at all).
func TestCinderTimeout(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	s.cfg.Timeout = 1
	f.hangVolumes = true
	start := time.Now()
	_, err := s.ResolveVolume(context.Background(), "tok-demo", "demo", "RegionOne", "11111111-0000-4000-8000-000000000001")
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid) {
		t.Errorf("hanging Cinder: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("hanging Cinder held the request %v", d)
	}
}

// A Cinder group's volumes, with the caller's token: sorted ids; another
// project's group is not found.
func TestGroupVolumes(t *testing.T) {
	f := newFakeCloud(t)
	s := newService(t, f)
	ctx := context.Background()
	ids, err := s.GroupVolumes(ctx, "tok-demo", "RegionOne", "22222222-0000-4000-8000-000000000001")
	if err != nil || !slices.Equal(ids, []string{"11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002"}) {
		t.Errorf("GroupVolumes: %v %v", ids, err)
	}
	if _, err := s.GroupVolumes(ctx, "tok-alt", "RegionOne", "22222222-0000-4000-8000-000000000001"); !errors.Is(err, ErrNotFound) {
		t.Errorf("another project's group: %v", err)
	}
	if _, err := s.GroupVolumes(ctx, "tok-demo", "RegionOne", "../volumes/detail"); err == nil {
		t.Error("a path as a group id was sent")
	}
}
