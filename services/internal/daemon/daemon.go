// Package daemon is the shared main of Ferry's server binaries: flags,
// configuration, logging and signals, so that cmd/ stays tiny.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/logging"
	"github.com/ferry-project/ferry/services/internal/profiling"
	"github.com/ferry-project/ferry/services/internal/version"
)

// DefaultConfigFile is where packaged installs keep the configuration.
const DefaultConfigFile = "/etc/ferry/ferry.conf"

// Run is a server's body; it returns when ctx is cancelled (SIGINT/SIGTERM)
// or on a fatal error.
type Run func(ctx context.Context, cfg *config.Config, log *slog.Logger) error

// Main parses args, loads and checks the configuration and runs the server.
// It returns the process exit code: 0, 1 on a failure (one line on stderr
// naming the reason), 2 on bad usage.
func Main(binary, summary string, args []string, stderr io.Writer, check func(*config.Config) error, run Run) int {
	fs := flag.NewFlagSet(binary, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config-file", DefaultConfigFile, "path of the configuration file")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s [--config-file PATH] [--version]\n\n%s\n\nOptions:\n", binary, summary)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", binary, fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stderr, "%s %s\n", binary, version.String())
		return 0
	}
	res, err := config.Load(*configFile)
	if err == nil {
		err = check(res.Config)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", binary, err)
		return 1
	}
	cfg := res.Config
	log, closer, err := logging.New(binary, cfg.Default.Debug, cfg.Default.LogFile)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", binary, err)
		return 1
	}
	defer closer.Close()
	for _, w := range res.Warnings {
		log.Warn("configuration", "file", *configFile, "warning", w)
	}
	stopProfile, err := profiling.Start()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", binary, err)
		return 1
	}
	defer stopProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("starting", "version", version.String(), "config_file", *configFile)
	if err := run(ctx, cfg, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("exiting", "error", err)
		fmt.Fprintf(stderr, "%s: %v\n", binary, err)
		return 1
	}
	log.Info("stopped")
	return 0
}
