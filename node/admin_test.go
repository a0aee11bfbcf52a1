package node

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdmin_TokenAndPProf: with a token, every request but /healthz needs
// it; /debug/pprof is served only with admin.pprof.
func TestAdmin_TokenAndPProf(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, pprofOn := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.Site, cfg.Database.DSN = "a", "postgres://x@y/z"
		cfg.Admin.TokenFile, cfg.Admin.PProf = tokenFile, pprofOn
		n, err := New(cfg, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		if n.adminToken, err = cfg.Admin.BearerToken(); err != nil || n.adminToken != "s3cret" {
			t.Fatalf("token %q, %v; want the file's, trimmed", n.adminToken, err)
		}
		h := n.adminHandler()
		get := func(path, auth string) int {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, path, nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			h.ServeHTTP(rec, req)
			return rec.Code
		}
		for _, c := range []struct {
			path, auth string
			want       int
		}{
			{"/status", "", http.StatusUnauthorized},
			{"/metrics", "Bearer wrong", http.StatusUnauthorized},
			{"/check", "s3cret", http.StatusUnauthorized}, // not a bearer header
			{"/status", "Bearer s3cret", http.StatusOK},
			{"/metrics", "Bearer s3cret", http.StatusOK},
			{"/healthz", "", http.StatusOK},
		} {
			if got := get(c.path, c.auth); got != c.want {
				t.Errorf("pprof %v: GET %s with %q: %d, want %d", pprofOn, c.path, c.auth, got, c.want)
			}
		}
		want := http.StatusNotFound
		if pprofOn {
			want = http.StatusOK
		}
		if got := get("/debug/pprof/", "Bearer s3cret"); got != want {
			t.Errorf("admin.pprof %v: /debug/pprof/ %d, want %d", pprofOn, got, want)
		}
	}
}

func TestAdminConfig_BearerToken(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cfg     AdminConfig
		want    string
		wantErr bool
	}{
		{AdminConfig{}, "", false},
		{AdminConfig{Token: "from-env", TokenFile: empty}, "from-env", false},
		{AdminConfig{TokenFile: empty}, "", true},
		{AdminConfig{TokenFile: filepath.Join(t.TempDir(), "missing")}, "", true},
	} {
		got, err := c.cfg.BearerToken()
		if got != c.want || (err != nil) != c.wantErr {
			t.Errorf("%+v: %q, %v; want %q, error %v", c.cfg, got, err, c.want, c.wantErr)
		}
	}
}

// TestAdmin_HealthzAndCheckGuards: without the token, /healthz names the
// failing components, not their errors; /check refuses a browser's request
// and a repair by GET.
func TestAdmin_HealthzAndCheckGuards(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Site, cfg.Database.DSN, cfg.Admin.Token = "a", "postgres://x@y/z", "tok"
	n, err := New(cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	n.adminToken = "tok"
	n.setHealth("capture", errors.New("connect to db.internal as casualdb: refused"))
	h := n.adminHandler()
	do := func(method, path string, hdr map[string]string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := do(http.MethodGet, "/healthz", nil); rec.Code != http.StatusServiceUnavailable || rec.Body.String() != "failing: capture\n" {
		t.Errorf("/healthz without the token: %d %q, want 503 naming capture only", rec.Code, rec.Body)
	}
	if rec := do(http.MethodGet, "/healthz", map[string]string{"Authorization": "Bearer tok"}); !strings.Contains(rec.Body.String(), "db.internal") {
		t.Errorf("/healthz with the token: %q, want the error", rec.Body)
	}
	auth := map[string]string{"Authorization": "Bearer tok"}
	if rec := do(http.MethodGet, "/check?repair=1", auth); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /check?repair=1: %d, want 405", rec.Code)
	}
	if rec := do(http.MethodGet, "/check", map[string]string{"Authorization": "Bearer tok", "Origin": "https://evil.example"}); rec.Code != http.StatusForbidden {
		t.Errorf("/check from a web page: %d, want 403", rec.Code)
	}
}
