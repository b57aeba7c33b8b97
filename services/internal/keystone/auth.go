// Package keystone holds Ferry's Keystone helpers: user authentication the
// way the openstack CLI does it (OS_* variables, clouds.yaml), and token
// validation by the service user the way keystonemiddleware does it.
package keystone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
)

// Credentials are the openstack CLI's authentication options. Empty fields
// are unset.
type Credentials struct {
	Cloud                       string // --os-cloud / OS_CLOUD: an entry of clouds.yaml
	AuthURL                     string
	Username, UserID, Password  string
	ProjectName, ProjectID      string
	UserDomainName              string
	UserDomainID                string
	ProjectDomainName           string
	ProjectDomainID             string
	DomainName, DomainID        string
	ApplicationCredentialID     string
	ApplicationCredentialName   string
	ApplicationCredentialSecret string
	Token                       string
	RegionName                  string
	Interface                   string
	CACert                      string
	Insecure                    bool
	// Timeout bounds each HTTP request of the provider Authenticate
	// returns (and its re-authentications); zero means no bound.
	Timeout time.Duration
}

// CredentialsFromEnv reads the OS_* variables the openstack CLI reads.
func CredentialsFromEnv(getenv func(string) string) Credentials {
	return Credentials{
		Cloud:                       getenv("OS_CLOUD"),
		AuthURL:                     getenv("OS_AUTH_URL"),
		Username:                    getenv("OS_USERNAME"),
		UserID:                      getenv("OS_USER_ID"),
		Password:                    getenv("OS_PASSWORD"),
		ProjectName:                 firstOf(getenv("OS_PROJECT_NAME"), getenv("OS_TENANT_NAME")),
		ProjectID:                   firstOf(getenv("OS_PROJECT_ID"), getenv("OS_TENANT_ID")),
		UserDomainName:              getenv("OS_USER_DOMAIN_NAME"),
		UserDomainID:                getenv("OS_USER_DOMAIN_ID"),
		ProjectDomainName:           getenv("OS_PROJECT_DOMAIN_NAME"),
		ProjectDomainID:             getenv("OS_PROJECT_DOMAIN_ID"),
		DomainName:                  getenv("OS_DOMAIN_NAME"),
		DomainID:                    getenv("OS_DOMAIN_ID"),
		ApplicationCredentialID:     getenv("OS_APPLICATION_CREDENTIAL_ID"),
		ApplicationCredentialName:   getenv("OS_APPLICATION_CREDENTIAL_NAME"),
		ApplicationCredentialSecret: getenv("OS_APPLICATION_CREDENTIAL_SECRET"),
		Token:                       getenv("OS_TOKEN"),
		RegionName:                  getenv("OS_REGION_NAME"),
		Interface:                   getenv("OS_INTERFACE"),
		CACert:                      getenv("OS_CACERT"),
		Insecure:                    getenv("OS_INSECURE") == "true" || getenv("OS_INSECURE") == "1",
	}
}

// ErrNoAuthURL means neither a cloud nor an auth URL was given.
var ErrNoAuthURL = errors.New("no credentials: set OS_CLOUD (or --os-cloud) or OS_AUTH_URL and the other OS_* variables")

// Resolve turns credentials into gophercloud options. With a cloud name the
// entry comes from clouds.yaml (OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
// ~/.config/openstack/, /etc/openstack/) and explicit fields override it.
func (c Credentials) Resolve() (gophercloud.AuthOptions, gophercloud.EndpointOpts, *tls.Config, error) {
	if c.Cloud != "" {
		opts := []clouds.ParseOption{clouds.WithCloudName(c.Cloud)}
		for _, o := range []struct {
			v string
			f func(string) clouds.ParseOption
		}{
			{c.RegionName, clouds.WithRegion}, {c.Interface, clouds.WithEndpointType},
			{c.AuthURL, clouds.WithIdentityEndpoint}, {c.Username, clouds.WithUsername},
			{c.Password, clouds.WithPassword}, {c.ProjectName, clouds.WithProjectName},
			{c.ProjectID, clouds.WithProjectID}, {c.CACert, clouds.WithCACertPath},
		} {
			if o.v != "" {
				opts = append(opts, o.f(o.v))
			}
		}
		ao, eo, tc, err := clouds.Parse(opts...)
		if err != nil {
			return ao, eo, nil, fmt.Errorf("cloud %q: %w", c.Cloud, err)
		}
		ao.AllowReauth = true
		return ao, eo, tc, nil
	}
	if c.AuthURL == "" {
		return gophercloud.AuthOptions{}, gophercloud.EndpointOpts{}, nil, ErrNoAuthURL
	}
	ao := gophercloud.AuthOptions{
		IdentityEndpoint:            c.AuthURL,
		Username:                    c.Username,
		UserID:                      c.UserID,
		Password:                    c.Password,
		DomainName:                  firstOf(c.UserDomainName, c.DomainName),
		DomainID:                    firstOf(c.UserDomainID, c.DomainID),
		ApplicationCredentialID:     c.ApplicationCredentialID,
		ApplicationCredentialName:   c.ApplicationCredentialName,
		ApplicationCredentialSecret: c.ApplicationCredentialSecret,
		TokenID:                     c.Token,
		AllowReauth:                 c.Token == "",
	}
	switch {
	case c.ApplicationCredentialID != "" || c.ApplicationCredentialName != "":
		// An application credential carries its own scope.
		if c.ApplicationCredentialID != "" {
			ao.Username, ao.UserID, ao.DomainName, ao.DomainID = "", "", "", ""
		}
	case c.ProjectID != "":
		ao.Scope = &gophercloud.AuthScope{ProjectID: c.ProjectID}
	case c.ProjectName != "":
		ao.Scope = &gophercloud.AuthScope{
			ProjectName: c.ProjectName,
			DomainName:  firstOf(c.ProjectDomainName, c.DomainName),
			DomainID:    firstOf(c.ProjectDomainID, c.DomainID),
		}
		if ao.Scope.DomainName == "" && ao.Scope.DomainID == "" {
			return ao, gophercloud.EndpointOpts{}, nil, errors.New("OS_PROJECT_NAME needs OS_PROJECT_DOMAIN_NAME or OS_PROJECT_DOMAIN_ID")
		}
	case c.DomainName != "" || c.DomainID != "":
		ao.Scope = &gophercloud.AuthScope{DomainName: c.DomainName, DomainID: c.DomainID}
	}
	eo := gophercloud.EndpointOpts{Region: c.RegionName, Availability: availability(c.Interface)}
	var tc *tls.Config
	if c.CACert != "" || c.Insecure {
		tc = &tls.Config{InsecureSkipVerify: c.Insecure} //nolint:gosec // only when the user asks, as the openstack CLI
		if c.CACert != "" {
			pem, err := os.ReadFile(c.CACert)
			if err != nil {
				return ao, eo, nil, fmt.Errorf("OS_CACERT: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return ao, eo, nil, fmt.Errorf("OS_CACERT %s: no PEM certificate found", c.CACert)
			}
			tc.RootCAs = pool
		}
	}
	return ao, eo, tc, nil
}

// Authenticate resolves the credentials and gets a token. The provider
// re-authenticates when the token expires (except for a given OS_TOKEN).
func (c Credentials) Authenticate(ctx context.Context) (*gophercloud.ProviderClient, gophercloud.EndpointOpts, error) {
	ao, eo, tc, err := c.Resolve()
	if err != nil {
		return nil, eo, err
	}
	p, err := openstack.NewClient(ao.IdentityEndpoint)
	if err != nil {
		return nil, eo, fmt.Errorf("auth URL %q: %w", ao.IdentityEndpoint, err)
	}
	if tc != nil {
		p.HTTPClient = http.Client{Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}}
	}
	p.HTTPClient.Timeout = c.Timeout
	if err := openstack.Authenticate(ctx, p, ao); err != nil {
		return nil, eo, fmt.Errorf("authentication failed at %s: %w", ao.IdentityEndpoint, err)
	}
	return p, eo, nil
}

func availability(iface string) gophercloud.Availability {
	switch iface {
	case "internal", "internalURL":
		return gophercloud.AvailabilityInternal
	case "admin", "adminURL":
		return gophercloud.AvailabilityAdmin
	default:
		return gophercloud.AvailabilityPublic
	}
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
