// Package manage is ferry-manage: database migrations, configuration sample,
// certificates and the operator's pre-upgrade status check.
package manage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/api/auth"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/daemon"
	"github.com/ferry-project/ferry/services/internal/version"
)

// errReported means the command already printed why it failed.
var errReported = errors.New("failed")

// Execute runs ferry-manage with args and returns the exit code.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewCommand(stdout)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintf(stderr, "ferry-manage: %v\n", err)
		}
		return 1
	}
	return 0
}

// NewCommand builds the command tree.
func NewCommand(stdout io.Writer) *cobra.Command {
	var configFile string
	root := &cobra.Command{
		Use:           "ferry-manage",
		Short:         "Ferry's management tool: database, configuration, certificates, status",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&configFile, "config-file", daemon.DefaultConfigFile, "path of the configuration file")
	load := func() (*config.Config, error) {
		res, err := config.Load(configFile)
		if err != nil {
			return nil, err
		}
		return res.Config, nil
	}
	openDB := func(ctx context.Context) (*db.DB, error) {
		cfg, err := load()
		if err != nil {
			return nil, err
		}
		return db.Open(ctx, cfg.Database.Connection)
	}

	dbCmd := &cobra.Command{Use: "db", Short: "Database schema commands"}
	dbCmd.AddCommand(&cobra.Command{
		Use:   "sync",
		Short: "Create or upgrade the database schema to the latest version (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openDB(cmd.Context())
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.Sync(cmd.Context()); err != nil {
				return err
			}
			cur, _, err := d.Version(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "database schema at version %s\n", cur)
			return nil
		},
	}, &cobra.Command{
		Use:   "version",
		Short: "Print the schema version of the database and the latest this release knows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openDB(cmd.Context())
			if err != nil {
				return err
			}
			defer d.Close()
			cur, latest, err := d.Version(cmd.Context())
			if err != nil {
				return err
			}
			if cur == "" {
				cur = "none"
			}
			fmt.Fprintf(stdout, "current: %s\nlatest: %s\n", cur, latest)
			return nil
		},
	})

	cfgCmd := &cobra.Command{Use: "config", Short: "Configuration commands"}
	cfgCmd.AddCommand(&cobra.Command{
		Use:   "sample",
		Short: "Print the sample configuration file (every option at its default)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return config.WriteSample(stdout)
		},
	}, &cobra.Command{
		Use:   "check",
		Short: "Parse the configuration file and report errors and unknown options",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			res, err := config.Load(configFile)
			if err != nil {
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintf(stdout, "warning: %s\n", w)
			}
			fmt.Fprintf(stdout, "%s: OK\n", configFile)
			return nil
		},
	})

	policyCmd := &cobra.Command{Use: "policy", Short: "API policy commands"}
	policyCmd.AddCommand(&cobra.Command{
		Use:   "sample",
		Short: "Print the default API policy as a commented policy.yaml",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := io.WriteString(stdout, auth.SampleYAML())
			return err
		},
	})

	root.AddCommand(dbCmd, cfgCmd, policyCmd, pkiCommand(stdout), &cobra.Command{
		Use:   "status",
		Short: "Check what an upgrade needs: database reachable and schema current, message broker reachable",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			if !runStatus(cmd.Context(), cfg, stdout) {
				return errReported
			}
			return nil
		},
	})
	return root
}

// runStatus prints one line per check, in the upgrade-check style of
// `nova-status upgrade check`, and reports whether all passed.
func runStatus(ctx context.Context, cfg *config.Config, w io.Writer) bool {
	ok := true
	check := func(name string, fn func(context.Context) error) {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := fn(cctx); err != nil {
			ok = false
			fmt.Fprintf(w, "%-10s FAILED  %v\n", name, err)
			return
		}
		fmt.Fprintf(w, "%-10s OK\n", name)
	}
	check("database", func(ctx context.Context) error {
		d, err := db.Open(ctx, cfg.Database.Connection)
		if err != nil {
			return err
		}
		defer d.Close()
		return d.CheckCurrent(ctx)
	})
	check("broker", func(ctx context.Context) error {
		return amqp.Ping(ctx, cfg.Default.TransportURL)
	})
	return ok
}
