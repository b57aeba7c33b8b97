// Package cli is the `ferry` command: Ferry's client for people at a
// terminal. It authenticates like the openstack CLI (OS_* variables,
// --os-cloud with clouds.yaml) and has no configuration file.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/client"
	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/version"
)

// Execute runs the CLI and returns the exit code.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewCommand(os.Getenv, stdout, stderr)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", apiError(err))
		return 1
	}
	return 0
}

// app is one run of the CLI: its credentials (flags over OS_* variables)
// and where it writes.
type app struct {
	creds          keystone.Credentials
	stdout, stderr io.Writer
}

// APIVersion is the microversion the CLI was written for, sent on every
// request as OpenStack-API-Version: volume-ferry 1.1, as the openstack CLI
// sends the version it knows (1.1 adds replications and a transfer's
// replication_id). The replication-group commands ask for 1.2, which
// adds the groups, on their own requests (the replicationgroups
// package's).
const APIVersion = "1.1"

// connect authenticates and finds Ferry's endpoint in the catalog for the
// cloud's region.
func (a *app) connect(ctx context.Context) (*gophercloud.ServiceClient, gophercloud.EndpointOpts, error) {
	pc, eo, err := a.creds.Authenticate(ctx)
	if err != nil {
		var he *httpError
		if e := apiError(err); errors.As(e, &he) {
			return nil, eo, fmt.Errorf("authentication failed: %w", he)
		}
		return nil, eo, err
	}
	sc, err := client.NewFerryV1(pc, eo)
	if err != nil {
		return nil, eo, err
	}
	sc.Microversion = APIVersion
	return sc, eo, nil
}

// NewCommand builds the command tree. Authentication flags default to the
// OS_* variables read through getenv.
func NewCommand(getenv func(string) string, stdout, stderr io.Writer) *cobra.Command {
	a := &app{creds: keystone.CredentialsFromEnv(getenv), stdout: stdout, stderr: stderr}
	creds := &a.creds
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Move and replicate Ceph RBD-backed volumes between OpenStack regions",
		Long: "ferry is the command-line client of Ferry. It authenticates like the openstack CLI:\n" +
			"source an openrc file (OS_* variables) or pick a clouds.yaml entry with --os-cloud.",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	f := root.PersistentFlags()
	for _, s := range []struct {
		p          *string
		name, help string
	}{
		{&creds.Cloud, "os-cloud", "cloud name in clouds.yaml (env OS_CLOUD)"},
		{&creds.AuthURL, "os-auth-url", "authentication URL (env OS_AUTH_URL)"},
		{&creds.Username, "os-username", "user name (env OS_USERNAME)"},
		{&creds.UserID, "os-user-id", "user id (env OS_USER_ID)"},
		{&creds.Password, "os-password", "user password (env OS_PASSWORD)"},
		{&creds.ProjectName, "os-project-name", "project name (env OS_PROJECT_NAME)"},
		{&creds.ProjectID, "os-project-id", "project id (env OS_PROJECT_ID)"},
		{&creds.UserDomainName, "os-user-domain-name", "user's domain name (env OS_USER_DOMAIN_NAME)"},
		{&creds.UserDomainID, "os-user-domain-id", "user's domain id (env OS_USER_DOMAIN_ID)"},
		{&creds.ProjectDomainName, "os-project-domain-name", "project's domain name (env OS_PROJECT_DOMAIN_NAME)"},
		{&creds.ProjectDomainID, "os-project-domain-id", "project's domain id (env OS_PROJECT_DOMAIN_ID)"},
		{&creds.ApplicationCredentialID, "os-application-credential-id", "application credential id (env OS_APPLICATION_CREDENTIAL_ID)"},
		{&creds.ApplicationCredentialName, "os-application-credential-name", "application credential name (env OS_APPLICATION_CREDENTIAL_NAME)"},
		{&creds.ApplicationCredentialSecret, "os-application-credential-secret", "application credential secret (env OS_APPLICATION_CREDENTIAL_SECRET)"},
		{&creds.Token, "os-token", "an existing token (env OS_TOKEN)"},
		{&creds.RegionName, "os-region-name", "region (env OS_REGION_NAME)"},
		{&creds.Interface, "os-interface", "endpoint interface: public, internal or admin (env OS_INTERFACE)"},
		{&creds.CACert, "os-cacert", "CA bundle for TLS verification (env OS_CACERT)"},
	} {
		f.StringVar(s.p, s.name, *s.p, s.help)
	}
	f.BoolVar(&creds.Insecure, "insecure", creds.Insecure, "do not verify TLS certificates")
	root.AddCommand(a.transferCommand(), a.replicationCommand(), a.groupCommand(), a.serviceCommand())
	return root
}
