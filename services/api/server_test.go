package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/internal/config"
)

func newTestServer(t *testing.T) *httptest.Server {
	t.Helper()
	ctx := context.Background()
	d, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "ferry.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: config.Defaults(), log: slog.New(slog.DiscardHandler), db: d}
	ts := httptest.NewServer(s.Router())
	t.Cleanup(ts.Close)
	s.cfg.API.PublicEndpoint = ts.URL
	return ts
}

func TestVersionsDocument(t *testing.T) {
	ts := newTestServer(t)
	resp, err := http.Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusMultipleChoices {
		t.Errorf("status %d, want 300", resp.StatusCode)
	}
	if id := resp.Header.Get("X-Openstack-Request-Id"); !strings.HasPrefix(id, "req-") || len(id) != 40 {
		t.Errorf("request id %q", id)
	}
	var doc struct {
		Versions []struct {
			ID, Status, Version string
			MinVersion          string `json:"min_version"`
			Links               []struct{ Rel, Href string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Versions) != 1 || doc.Versions[0].MinVersion != MinMicroversion || len(doc.Versions[0].Links) != 1 ||
		doc.Versions[0].Links[0].Href != ts.URL+"/v1/" {
		t.Errorf("versions document %+v", doc)
	}
}

func TestUnknownPathIsOpenStack404(t *testing.T) {
	ts := newTestServer(t)
	resp, err := http.Get(ts.URL + "/v1/nope")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var e map[string]struct {
		Code    int
		Message string
	}
	if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 404 || e["itemNotFound"].Code != 404 || e["itemNotFound"].Message == "" {
		t.Errorf("404 body %s (status %d, err %v)", body, resp.StatusCode, err)
	}
	if resp.Header.Get("X-Openstack-Request-Id") == "" {
		t.Error("no request id on an error")
	}
}

func TestHealthcheck(t *testing.T) {
	ts := newTestServer(t)
	resp, err := http.Get(ts.URL + "/healthcheck")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthcheck %d", resp.StatusCode)
	}
}
