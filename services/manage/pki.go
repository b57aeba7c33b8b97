package manage

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/internal/pki"
)

// defaultPKIDir is where the CA and the agent certificates live by default.
const defaultPKIDir = "/etc/ferry/pki"

// pkiCommand builds `ferry-manage pki`: the CA and the agent certificates of
// the mutual TLS data streams. Its commands do not read the config file.
func pkiCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "Certificates for the agents' mutual TLS data streams",
	}

	var initOpts struct {
		dir          string
		commonName   string
		validityDays int
		force        bool
	}
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the CA that signs the agent certificates",
		Long: "Create a CA (ECDSA P-256) as ca.crt and ca.key in --dir. ca.crt is the [tls] ca_file\n" +
			"of every agent; ca.key stays on the host that issues certificates.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if initOpts.validityDays <= 0 {
				return fmt.Errorf("--validity-days must be positive, got %d", initOpts.validityDays)
			}
			certPath, keyPath, err := pki.InitCA(initOpts.dir, pki.CAOptions{
				CommonName: initOpts.commonName,
				Validity:   days(initOpts.validityDays),
				Force:      initOpts.force,
			})
			if err != nil {
				return forceHint(err)
			}
			fmt.Fprintln(stdout, certPath)
			fmt.Fprintln(stdout, keyPath)
			return nil
		},
	}
	initCmd.Flags().StringVar(&initOpts.dir, "dir", defaultPKIDir, "directory for ca.crt and ca.key (created 0700 if missing)")
	initCmd.Flags().StringVar(&initOpts.commonName, "common-name", pki.DefaultCACommonName, "common name of the CA")
	initCmd.Flags().IntVar(&initOpts.validityDays, "validity-days", 3650, "validity of the CA certificate in days")
	initCmd.Flags().BoolVar(&initOpts.force, "force", false, "replace an existing CA (certificates it issued stop being trusted)")

	var issueOpts struct {
		dir          string
		caDir        string
		dns          []string
		ips          []string
		validityDays int
		force        bool
		region, role string
	}
	issueCmd := &cobra.Command{
		Use:   "issue NAME",
		Short: "Issue an agent certificate (server and client authentication) signed by the CA",
		Long: "Write NAME.crt and NAME.key into --dir, signed by the CA in --ca-dir; they are the\n" +
			"agent's [tls] cert_file and key_file. The subject alternative names are the --dns and\n" +
			"--ip values, or NAME itself when none is given; they must include the host part of the\n" +
			"agent's data_advertise address. --region and --role become URI names\n" +
			"(urn:ferry:region:R, urn:ferry:role:agent) that the other end of each data stream checks.",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if issueOpts.validityDays <= 0 {
				return fmt.Errorf("--validity-days must be positive, got %d", issueOpts.validityDays)
			}
			opts := pki.IssueOptions{
				DNSNames: issueOpts.dns,
				Validity: days(issueOpts.validityDays),
				Force:    issueOpts.force,
				Region:   issueOpts.region,
				Role:     issueOpts.role,
			}
			for _, s := range issueOpts.ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--ip %q is not an IP address", s)
				}
				opts.IPAddresses = append(opts.IPAddresses, ip)
			}
			certPath, keyPath, err := pki.Issue(issueOpts.caDir, issueOpts.dir, args[0], opts)
			if err != nil {
				return forceHint(err)
			}
			fmt.Fprintln(stdout, certPath)
			fmt.Fprintln(stdout, keyPath)
			return nil
		},
	}
	issueCmd.Flags().StringVar(&issueOpts.dir, "dir", defaultPKIDir, "directory for NAME.crt and NAME.key (created 0700 if missing)")
	issueCmd.Flags().StringVar(&issueOpts.caDir, "ca-dir", defaultPKIDir, "directory holding ca.crt and ca.key")
	issueCmd.Flags().StringSliceVar(&issueOpts.dns, "dns", nil, "DNS subject alternative name (repeatable, or comma-separated)")
	issueCmd.Flags().StringSliceVar(&issueOpts.ips, "ip", nil, "IP address subject alternative name (repeatable, or comma-separated)")
	issueCmd.Flags().IntVar(&issueOpts.validityDays, "validity-days", 365, "validity in days (never beyond the CA's)")
	issueCmd.Flags().BoolVar(&issueOpts.force, "force", false, "replace an existing certificate and key of the same name")
	issueCmd.Flags().StringVar(&issueOpts.region, "region", "", "the agent's region, named in the certificate (required by ferry-agent: its [agent] region)")
	issueCmd.Flags().StringVar(&issueOpts.role, "role", pki.RoleAgent, "the role named in the certificate")

	var stateOpts struct {
		out   string
		force bool
	}
	stateCmd := &cobra.Command{
		Use:   "state-key",
		Short: "Create a region's state key (the same file on every agent of the region)",
		Long: "Write 32 random bytes (hex, mode 0600) to --out: the [agent] state_key_file of every agent\n" +
			"of one region. It seals what Ferry keeps in RBD image metadata (checkpoints, snapshot\n" +
			"records, snapshot tags), so that a pool writer cannot forge them. Replacing it makes the\n" +
			"next transfer of each image a full copy.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := pki.WriteStateKey(stateOpts.out, stateOpts.force); err != nil {
				return forceHint(err)
			}
			fmt.Fprintln(stdout, stateOpts.out)
			return nil
		},
	}
	stateCmd.Flags().StringVar(&stateOpts.out, "out", defaultPKIDir+"/"+pki.StateKeyFile, "file to write")
	stateCmd.Flags().BoolVar(&stateOpts.force, "force", false, "replace an existing key")

	var signOpts struct {
		dir   string
		force bool
	}
	signCmd := &cobra.Command{
		Use:   "signing-key",
		Short: "Create the key pair ferry-api signs agent-bound commands with",
		Long: "Write an Ed25519 key pair as signing.key (0600: ferry-api's [api] command_signing_key_file,\n" +
			"nowhere else) and signing.pub (every agent's [agent] command_verify_key_file) in --dir.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			keyPath, pubPath, err := pki.WriteSigningKey(signOpts.dir, signOpts.force)
			if err != nil {
				return forceHint(err)
			}
			fmt.Fprintln(stdout, keyPath)
			fmt.Fprintln(stdout, pubPath)
			return nil
		},
	}
	signCmd.Flags().StringVar(&signOpts.dir, "dir", defaultPKIDir, "directory for signing.key and signing.pub")
	signCmd.Flags().BoolVar(&signOpts.force, "force", false, "replace an existing key pair")

	cmd.AddCommand(initCmd, issueCmd, stateCmd, signCmd)
	return cmd
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

// forceHint points at --force when a file would have been overwritten.
func forceHint(err error) error {
	if errors.Is(err, pki.ErrExists) {
		return fmt.Errorf("%w (use --force to replace it)", err)
	}
	return err
}
