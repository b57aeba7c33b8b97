package agent

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent/transfer"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/daemon"
	"github.com/ferry-project/ferry/services/internal/logging"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/profiling"
)

// HarnessResult is what `ferry-agent transfer` prints (JSON) when a
// transfer completes.
type HarnessResult struct {
	TransferID string `json:"transfer_id"`
	Mode       string `json:"mode"`
	Base       string `json:"base,omitempty"`
	// Snapshot is the one both sides end with: empty when ephemeral.
	Snapshot string `json:"snapshot"`
	// SourceSnapshot is the source snapshot copied.
	SourceSnapshot string `json:"source_snapshot,omitempty"`
	Ephemeral      bool   `json:"ephemeral,omitempty"`
	// Removed and DestRemoved are the snapshots removed at the source and
	// at the destination.
	Removed      []string `json:"removed_snapshots,omitempty"`
	DestRemoved  []string `json:"dest_removed_snapshots,omitempty"`
	Digest       string   `json:"digest"`
	BytesTotal   uint64   `json:"bytes_total"`
	BytesDone    uint64   `json:"bytes_done"`
	BytesRead    uint64   `json:"bytes_read"`
	BytesSent    uint64   `json:"bytes_sent"`
	Skipped      uint64   `json:"skipped_chunks"`
	Resumed      bool     `json:"resumed"`
	Reconnects   uint64   `json:"reconnects"`
	Seconds      float64  `json:"seconds"`
	PeakRSSBytes int64    `json:"peak_rss_bytes"`
	// Phases: seconds per step (snapshot, prepare, diff, send, finish).
	Phases map[string]float64 `json:"phases"`
	// SnapshotTime is when the copied source snapshot was taken.
	SnapshotTime *time.Time `json:"snapshot_time,omitempty"`
}

// transferMain runs one transfer with this process as the source agent
// and the destination region's running agents (over the message bus) as
// the destination: the data-plane harness, without ferry-api.
func transferMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ferry-agent transfer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config-file", daemon.DefaultConfigFile, "configuration of this (source) agent")
	var job transfer.Job
	fs.StringVar(&job.TransferID, "transfer-id", "", "transfer id (default: a new UUID; give the same id again to resume)")
	fs.StringVar(&job.Pool, "pool", "", "source pool (required)")
	fs.StringVar(&job.Image, "image", "", "source image (required)")
	fs.StringVar(&job.Snapshot, "snapshot", "", "existing source snapshot to copy (default: Ferry takes ferry-<transfer id>)")
	fs.StringVar(&job.Mode, "mode", transfer.ModeAuto, "auto, full or incremental")
	fs.StringVar(&job.DestPool, "dest-pool", "", "destination pool (default: the source pool)")
	fs.StringVar(&job.DestImage, "dest-image", "", "destination image (default: the source image name)")
	fs.BoolVar(&job.Ephemeral, "ephemeral", false, "the copy is handed over (as to Cinder): a full copy that leaves no Ferry snapshot on either side and no base metadata")
	fs.StringVar(&job.ReplicationID, "replication-id", "", "the replication this transfer is a cycle of: the destination keeps the Ferry snapshots named by --retain besides the new one")
	retain := fs.String("retain", "", "with --replication-id: comma-separated destination snapshots to keep")
	fs.Int64Var(&job.BandwidthLimit, "bandwidth-limit", 0, "this transfer's bytes per second (below the agent's bandwidth_limit when that is lower; 0: the agent's)")
	destRegion := fs.String("dest-region", "", "destination region (required)")
	signingKey := fs.String("signing-key", "", "ferry-api's command signing key (ferry-manage pki signing-key): destination agents accept only requests granted by it")
	epoch := fs.Int64("epoch", 1, "the transfer's epoch (a repeat of an interrupted transfer may use a higher one)")
	timeout := fs.Duration("timeout", 0, "give up after this long (0: never)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ferry-agent transfer --pool P --image I --dest-region R [options]\n\n"+
			"Runs one transfer from this agent's region to the running agents of another region,\n"+
			"without ferry-api, and prints the result as JSON.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if job.Pool == "" || job.Image == "" || *destRegion == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if job.TransferID == "" {
		job.TransferID = uuid.NewString()
	}
	if *retain != "" {
		job.Retain = strings.Split(*retain, ",")
	}
	res, err := config.Load(*configFile)
	if err == nil {
		err = res.Config.ForAgent()
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferry-agent transfer: %v\n", err)
		return 1
	}
	cfg := res.Config
	log, closer, err := logging.New("ferry-agent", cfg.Default.Debug, cfg.Default.LogFile)
	if err != nil {
		fmt.Fprintf(stderr, "ferry-agent transfer: %v\n", err)
		return 1
	}
	defer closer.Close()
	applyMemoryLimit(cfg.Agent, log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	stopProfile, err := profiling.Start()
	if err != nil {
		fmt.Fprintf(stderr, "ferry-agent transfer: %v\n", err)
		return 1
	}
	job.Epoch = *epoch
	job.SourceRegion, job.DestRegion = cfg.Agent.Region, *destRegion
	if *signingKey != "" {
		if job.Grant, err = harnessGrant(*signingKey, cfg.Agent.Region, *destRegion, job); err != nil {
			fmt.Fprintf(stderr, "ferry-agent transfer: --signing-key: %v\n", err)
			return 1
		}
	}
	out, err := runHarness(ctx, cfg, log, job, *destRegion)
	stopProfile()
	if err != nil {
		fmt.Fprintf(stderr, "ferry-agent transfer %s: %v\n", job.TransferID, err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return 1
	}
	return 0
}

// harnessGrant signs the transfer.start ferry-api would send for job: the
// grant destination agents check every request against.
func harnessGrant(keyFile, region, destRegion string, job transfer.Job) (*rpc.Grant, error) {
	key, err := pki.LoadSigningKey(keyFile)
	if err != nil {
		return nil, err
	}
	start := rpc.TransferStart{TransferID: job.TransferID, Epoch: job.Epoch, ProjectID: job.ProjectID, Mode: job.Mode,
		Source:      rpc.Location{Region: region, Pool: job.Pool, Image: job.Image, Snapshot: job.Snapshot},
		Destination: rpc.Location{Region: destRegion, Pool: job.DestPool, Image: job.DestImage}, Ephemeral: job.Ephemeral,
		ReplicationID: job.ReplicationID, Retain: job.Retain, BandwidthLimit: job.BandwidthLimit}
	s, err := rpc.NewSigner(key, 24*time.Hour).Sign(rpc.MethodTransferStart, start)
	if err != nil {
		return nil, err
	}
	return &rpc.Grant{Method: rpc.MethodTransferStart, Body: s.Body, Signature: s.Signature}, nil
}

func runHarness(ctx context.Context, cfg *config.Config, log *slog.Logger, job transfer.Job, destRegion string) (HarnessResult, error) {
	a, err := newSource(ctx, cfg, log)
	if err != nil {
		return HarnessResult{}, err
	}
	defer a.Close(context.WithoutCancel(ctx))
	opts := amqp.DefaultOptions()
	opts.Name, opts.Logger = "ferry-agent transfer "+a.host, log
	opts.Passive = true // ferry-api owns the topology
	bus, err := amqp.New(ctx, cfg.Default.TransportURL, opts)
	if err != nil {
		return HarnessResult{}, fmt.Errorf("[DEFAULT] transport_url: %w", err)
	}
	defer bus.Close(context.WithoutCancel(ctx))
	start := time.Now()
	res, err := a.Source.Run(ctx, job, &RemoteDest{Caller: bus, Region: destRegion})
	if err != nil {
		return HarnessResult{}, err
	}
	return HarnessResult{
		TransferID: job.TransferID, Mode: res.Mode, Base: res.Base, Snapshot: res.Snapshot, Digest: res.Digest,
		SourceSnapshot: res.SourceSnapshot, Ephemeral: res.Ephemeral, Removed: res.Removed, DestRemoved: res.DestRemoved,
		BytesTotal: res.BytesTotal, BytesDone: res.BytesDone, BytesRead: res.Stream.BytesRead,
		BytesSent: res.Stream.BytesSent, Skipped: res.Stream.SkippedChunks, Resumed: res.Resumed,
		Reconnects: res.Stream.Reconnects, Seconds: time.Since(start).Seconds(), PeakRSSBytes: PeakRSS(os.Getpid()),
		Phases: res.Phases, SnapshotTime: completed(rpc.TransferStart{}, res).SnapshotTime,
	}, nil
}

// PeakRSS is a process's peak resident set (VmHWM) in bytes, or -1.
func PeakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	var kb int64
	for line := range strings.SplitSeq(string(b), "\n") {
		if n, _ := fmt.Sscanf(line, "VmHWM: %d kB", &kb); n == 1 {
			return kb << 10
		}
	}
	return -1
}
