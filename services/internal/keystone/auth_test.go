package keystone

import (
	"errors"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestResolveFromEnv(t *testing.T) {
	c := CredentialsFromEnv(env(map[string]string{
		"OS_AUTH_URL": "http://k:5000/v3", "OS_USERNAME": "demo", "OS_PASSWORD": "p",
		"OS_PROJECT_NAME": "demo", "OS_USER_DOMAIN_NAME": "Users", "OS_PROJECT_DOMAIN_NAME": "Projects",
		"OS_REGION_NAME": "RegionTwo", "OS_INTERFACE": "internal",
	}))
	ao, eo, tc, err := c.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if ao.DomainName != "Users" || ao.Scope == nil || ao.Scope.ProjectName != "demo" || ao.Scope.DomainName != "Projects" {
		t.Errorf("user and project domains mixed up: %+v scope %+v", ao, ao.Scope)
	}
	if eo.Region != "RegionTwo" || eo.Availability != "internal" || tc != nil {
		t.Errorf("endpoint opts %+v tls %v", eo, tc)
	}
	if !ao.AllowReauth {
		t.Error("password auth must re-authenticate")
	}
}

func TestResolveErrors(t *testing.T) {
	if _, _, _, err := (Credentials{}).Resolve(); !errors.Is(err, ErrNoAuthURL) {
		t.Errorf("empty: %v", err)
	}
	if _, _, _, err := (Credentials{AuthURL: "http://k/v3", Username: "u", ProjectName: "p"}).Resolve(); err == nil {
		t.Error("project name without domain accepted")
	}
	if _, _, _, err := (Credentials{AuthURL: "http://k/v3", CACert: "/nonexistent"}).Resolve(); err == nil {
		t.Error("missing CA file accepted")
	}
}

func TestResolveApplicationCredential(t *testing.T) {
	ao, _, _, err := CredentialsFromEnv(env(map[string]string{
		"OS_AUTH_URL": "http://k/v3", "OS_APPLICATION_CREDENTIAL_ID": "id1", "OS_APPLICATION_CREDENTIAL_SECRET": "s",
		"OS_USERNAME": "ignored", "OS_PROJECT_NAME": "ignored",
	})).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if ao.ApplicationCredentialID != "id1" || ao.Scope != nil || ao.Username != "" {
		t.Errorf("application credential options %+v", ao)
	}
}
