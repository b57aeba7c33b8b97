//go:build functional

package keystone

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

func serviceValidator(t *testing.T, ctx context.Context) *Validator {
	t.Helper()
	v, err := NewValidator(ctx, config.KeystoneAuthtoken{
		AuthURL:           testenv.Get(t, "OS_AUTH_URL"),
		Username:          testenv.Get(t, "FERRY_SERVICE_USER"),
		Password:          testenv.Get(t, "FERRY_SERVICE_PASSWORD"),
		ProjectName:       testenv.Get(t, "FERRY_SERVICE_PROJECT"),
		UserDomainName:    "Default",
		ProjectDomainName: "Default",
		RegionName:        "RegionOne",
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDemoTokenValidatedByServiceUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	creds := CredentialsFromEnv(testenv.Openrc(t, "demo"))
	p, _, err := creds.Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	token := p.Token()
	if token == "" {
		t.Fatal("no token")
	}

	v := serviceValidator(t, ctx)
	info, err := v.Validate(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	if info.UserName != "demo" || info.ProjectName != "demo" || info.ProjectID == "" {
		t.Errorf("token info %+v", info)
	}
	if !info.HasRole("member") || info.HasRole("admin") {
		t.Errorf("roles %v: want member, not admin", info.Roles)
	}
	if time.Until(info.ExpiresAt) <= 0 {
		t.Errorf("expires_at %v is in the past", info.ExpiresAt)
	}

	// The volume-ferry endpoint of RegionTwo, from the validated catalog.
	url, err := openstack.V3Endpoint(ctx, p, info.Catalog, gophercloud.EndpointOpts{
		Type: "volume-ferry", Region: "RegionTwo", Availability: gophercloud.AvailabilityPublic,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := testenv.Get(t, "FERRY_API_URL"); strings.TrimSuffix(url, "/") != want {
		t.Errorf("RegionTwo volume-ferry endpoint %q, want %q", url, want)
	}

	for _, bad := range []string{token + "x", "gAAAAABnot-a-token", strings.Repeat("a", 200)} {
		if _, err := v.Validate(ctx, bad); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Validate(invalid) = %v, want ErrInvalidToken", err)
		}
	}
	if _, err := v.Validate(ctx, ""); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("Validate(\"\") = %v", err)
	}
}

// The reader role is seen as reader and not member; clouds.yaml works like
// the openstack CLI's --os-cloud.
func TestCloudsYAMLReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Setenv("OS_CLIENT_CONFIG_FILE", filepath.Join(testenv.Get(t, "FERRY_STACK_DIR"), "clouds.yaml"))
	p, eo, err := Credentials{Cloud: "reader", RegionName: "RegionTwo"}.Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if eo.Region != "RegionTwo" {
		t.Errorf("region %q: --os-region-name must override clouds.yaml", eo.Region)
	}
	info, err := serviceValidator(t, ctx).Validate(ctx, p.Token())
	if err != nil {
		t.Fatal(err)
	}
	if !info.HasRole("reader") || info.HasRole("member") || info.ProjectName != "demo" {
		t.Errorf("reader token: roles %v project %q", info.Roles, info.ProjectName)
	}
	if _, _, err := (Credentials{Cloud: "nope"}).Authenticate(ctx); err == nil {
		t.Error("unknown cloud accepted")
	}
}

func TestWrongPassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env := testenv.Openrc(t, "demo")
	creds := CredentialsFromEnv(env)
	creds.Password = "wrong"
	_, _, err := creds.Authenticate(ctx)
	if !gophercloud.ResponseCodeIs(err, 401) {
		t.Errorf("wrong password: %v, want 401", err)
	}
}
