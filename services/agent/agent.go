// Package agent is ferry-agent: it runs next to one region's Ceph cluster,
// reads and writes RBD images there and streams them to and from the agents
// of other regions. It never touches the database.
package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/daemon"
)

// Run connects to the region's cluster, checks the pool allow-list and
// serves until ctx is cancelled.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	a := cfg.Agent
	log = log.With("region", a.Region, "host", cfg.Hostname())
	cluster, err := rbd.Connect(ctx, rbd.Options{ConfFile: a.CephConf, User: a.CephUser, Keyring: a.CephKeyring})
	if err != nil {
		return fmt.Errorf("[agent] ceph_conf %s: %w", a.CephConf, err)
	}
	defer cluster.Close()
	for _, p := range a.Pools {
		if err := cluster.CheckPool(ctx, p); err != nil {
			return fmt.Errorf("[agent] pools: %w", err)
		}
	}
	log.Info("connected to ceph", "fsid", cluster.FSID(), "pools", a.Pools)
	<-ctx.Done()
	return nil
}

// Main is ferry-agent's main: flags, configuration, logging, signals.
func Main(args []string, stderr io.Writer) int {
	return daemon.Main("ferry-agent", "Ferry's region agent: reads and writes RBD images in this region's Ceph cluster and streams them to other regions' agents over mutual TLS.",
		args, stderr, (*config.Config).ForAgent, Run)
}
