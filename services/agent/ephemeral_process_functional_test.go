//go:build functional

package agent_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// `ferry-agent transfer --ephemeral` between two agent processes (the
// flag crosses the prepare RPC): no snapshot on either side afterwards,
// the destination equal to the source; without the flag both sides keep
// the snapshot.
func TestEphemeralTwoAgentProcesses(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	name := fmt.Sprintf("proc-eph-%d", time.Now().UnixNano())
	h.Image(name, 16<<20+4096, true)
	spec := h.Pool + "/" + name
	if _, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--ephemeral", "--mode", "incremental"); err == nil || !strings.Contains(err.Error(), "only be a full copy") {
		t.Errorf("an ephemeral incremental: %v", err)
	}
	id := "pe1-" + name
	res, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", id, "--ephemeral")
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "full" || res.Snapshot != "" || !res.Ephemeral || res.SourceSnapshot != "ferry-"+id || !slices.Equal(res.Removed, []string{"ferry-" + id}) {
		t.Errorf("result %+v", res)
	}
	for _, conf := range []string{h.SrcConf, h.DstConf} {
		if s := testenv.Snapshots(t, conf, spec); len(s) != 0 {
			t.Errorf("%s: snapshots %v after an ephemeral transfer", conf, s)
		}
	}
	if a, b := testenv.ExportSHA(t, h.SrcConf, spec), testenv.ExportSHA(t, h.DstConf, spec); a != b {
		t.Errorf("source sha256 %s, destination %s", a, b)
	}

	name2 := name + "-n"
	h.Image(name2, 8<<20, true)
	res, err = h.Transfer(src, "--pool", h.Pool, "--image", name2, "--transfer-id", "pn-"+name)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ephemeral || res.Snapshot != "ferry-pn-"+name {
		t.Errorf("result %+v", res)
	}
	for _, conf := range []string{h.SrcConf, h.DstConf} {
		if s := testenv.Snapshots(t, conf, h.Pool+"/"+name2); !slices.Equal(s, []string{res.Snapshot}) {
			t.Errorf("%s: snapshots %v after a normal transfer, want %s", conf, s, res.Snapshot)
		}
	}
	h.Same(name2, res.Snapshot)
}
