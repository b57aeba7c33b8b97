package api

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
)

const good = `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "vol-1"}, "destination": {"region": "RegionTwo"}}}`

func TestParseCreateGood(t *testing.T) {
	tr, err := ParseCreate(strings.NewReader(good), 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Mode != "auto" || tr.Source.Pool != "volumes" || tr.Source.Image != "vol-1" || tr.Destination.Region != "RegionTwo" {
		t.Errorf("parsed %+v %+v %+v", tr, tr.Source, tr.Destination)
	}
	tr, err = ParseCreate(strings.NewReader(`{"transfer": {"source": {"region": "A", "volume_id": "8C3C5E1E-6F0E-4F57-9A43-0C1F3E7E9D10"}, "destination": {"region": "B", "pool": "p", "image": "i"}, "mode": "incremental", "name": "n", "description": "d"}}`), 1<<16)
	if err != nil || tr.Mode != "incremental" || tr.Destination.Image != "i" || tr.Source.VolumeID != "8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10" {
		t.Errorf("volume source: %+v %v", tr, err)
	}
}

// Bad bodies get a 400 (or 413) whose message names the problem.
func TestParseCreateBad(t *testing.T) {
	long := strings.Repeat("x", 256)
	cases := []struct {
		name, body, want string
		code             int
	}{
		{"empty", ``, "empty body", 400},
		{"not json", `hello`, "invalid JSON", 400},
		{"truncated", `{"transfer": {"source":`, "truncated JSON", 400},
		{"array", `[]`, "must be a struct", 400},
		{"trailing data", good + `{}`, "data after the JSON object", 400},
		{"no transfer", `{}`, `{"transfer": {...}}`, 400},
		{"null transfer", `{"transfer": null}`, `{"transfer": {...}}`, 400},
		{"unknown top field", `{"transfer": {}, "x": 1}`, `unknown field "x"`, 400},
		{"unknown field", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i", "colour": "red"}, "destination": {"region": "B"}}}`, `unknown field "colour"`, 400},
		{"no source", `{"transfer": {"destination": {"region": "B"}}}`, "transfer.source is required", 400},
		{"no destination", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}}}`, "transfer.destination is required", 400},
		{"no source region", `{"transfer": {"source": {"pool": "p", "image": "i"}, "destination": {"region": "B"}}}`, "transfer.source.region is required", 400},
		{"no destination region", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {}}}`, "transfer.destination.region is required", 400},
		{"same region", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {"region": "A"}}}`, `both in region "A"`, 400},
		{"no source kind", `{"transfer": {"source": {"region": "A"}, "destination": {"region": "B"}}}`, "needs volume_id, backup_id, or pool and image", 400},
		{"two source kinds", `{"transfer": {"source": {"region": "A", "volume_id": "v", "pool": "p", "image": "i"}, "destination": {"region": "B"}}}`, "takes one of", 400},
		{"pool without image", `{"transfer": {"source": {"region": "A", "pool": "p"}, "destination": {"region": "B"}}}`, "both pool and image", 400},
		{"bad mode", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {"region": "B"}, "mode": "fast"}}`, `transfer.mode "fast"`, 400},
		{"region a number", `{"transfer": {"source": {"region": 1, "pool": "p", "image": "i"}, "destination": {"region": "B"}}}`, `"transfer.source.region" must be a string, not a number`, 400},
		{"mode a bool", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {"region": "B"}, "mode": true}}`, `must be a string, not a bool`, 400},
		{"source a string", `{"transfer": {"source": "vol", "destination": {"region": "B"}}}`, `must be a struct, not a string`, 400},
		{"long name", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {"region": "B"}, "name": "` + long + `"}}`, "transfer.name is longer than 255", 400},
		{"slash in image", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "a/b"}, "destination": {"region": "B"}}}`, "not a valid RBD name", 400},
		{"at in dest image", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {"region": "B", "image": "x@s"}}}`, "not a valid RBD name", 400},
		{"nul in name", `{"transfer": {"source": {"region": "A", "pool": "p", "image": "i"}, "destination": {"region": "B"}, "name": "a\u0000b"}}`, "NUL", 400},
		{"long volume id", `{"transfer": {"source": {"region": "A", "volume_id": "` + long + `"}, "destination": {"region": "B"}}}`, "transfer.source.volume_id \"xxxxxxxx", 400},
		// Cinder ids go into Cinder's URLs: nothing but a UUID is one.
		{"volume id a path", `{"transfer": {"source": {"region": "A", "volume_id": "../../v3/volumes/detail"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id a query", `{"transfer": {"source": {"region": "A", "volume_id": "detail?all_tenants=1"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id dot dot", `{"transfer": {"source": {"region": "A", "volume_id": ".."}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id newline", `{"transfer": {"source": {"region": "A", "volume_id": "a\nb"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id bad escape", `{"transfer": {"source": {"region": "A", "volume_id": "%zz"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id in braces", `{"transfer": {"source": {"region": "A", "volume_id": "{8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10}"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id urn", `{"transfer": {"source": {"region": "A", "volume_id": "urn:uuid:8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"volume id without dashes", `{"transfer": {"source": {"region": "A", "volume_id": "8c3c5e1e6f0e4f579a430c1f3e7e9d10"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"backup id a path", `{"transfer": {"source": {"region": "A", "backup_id": "../backups/detail"}, "destination": {"region": "B"}}}`, "transfer.source.backup_id", 400},
		{"backup id unicode", `{"transfer": {"source": {"region": "A", "backup_id": "ü8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d1"}, "destination": {"region": "B"}}}`, "is not a UUID", 400},
		{"too large", `{"transfer": {"name": "` + strings.Repeat("y", 2000) + `"}}`, "too large", 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCreate(strings.NewReader(tc.body), 1024)
			if err == nil {
				t.Fatalf("accepted %s", tc.body)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if code := statusOf(err); code != tc.code {
				t.Errorf("status %d, want %d", code, tc.code)
			}
		})
	}
	if len(cases) < 20 {
		t.Fatalf("only %d bad requests", len(cases))
	}
}

// The JSON field names are the contract of the client, the CLI and the
// dashboard (ARCHITECTURE §3).
func TestTransferViewFields(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	msg := "boom"
	tr := &db.Transfer{ID: "id1", Name: "n", ProjectID: "p", UserID: "u", Status: db.StatusTransferring, Mode: db.ModeFull,
		SourceRegion: "A", SourcePool: "volumes", SourceImage: "i", DestRegion: "B", DestPool: "volumes", DestImage: "i",
		BytesTotal: 200, BytesTransferred: 50, RateBytesPerSecond: 10, Error: &msg, CreatedAt: now, UpdatedAt: now, StartedAt: &now}
	b, err := json.Marshal(ViewOf(tr))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := []string{"bytes_total", "bytes_transferred", "created_at", "description", "destination", "digest", "error", "eta_seconds",
		"finished_at", "id", "mode", "name", "progress", "project_id", "rate_bytes_per_second", "replication_id", "source", "started_at", "status", "updated_at", "user_id"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("fields %v\nwant   %v", keys, want)
	}
	src := m["source"].(map[string]any)
	for _, k := range []string{"region", "pool", "image", "snapshot", "volume_id", "backup_id"} {
		if _, ok := src[k]; !ok {
			t.Errorf("source lacks %q", k)
		}
	}
	if m["progress"].(float64) != 25 || m["eta_seconds"].(float64) != 15 || m["created_at"] != "2026-11-25T10:00:00.000000Z" || m["finished_at"] != nil || m["error"] != "boom" || src["volume_id"] != nil || m["replication_id"] != nil {
		t.Errorf("values %s", b)
	}
}
