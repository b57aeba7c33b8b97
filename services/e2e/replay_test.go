//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// The two findings of the fault suite, each on its own and deterministic:
// a transfer's signed commands sent again late, once a newer transfer of
// the same image completed. Anyone who may publish on Ferry's exchange
// (guest on the stack; any region's agent user in production) can send
// them again while their signature is valid ([api] command_ttl), and a
// redelivery after a reconnection does the same.

// replaySetup moves a fresh image twice (full, then incremental) with the
// stack's agents while a tap keeps the real messages; it returns the
// image, both transfer ids and the tap.
func replaySetup(t *testing.T, prefix string) (image, first, second string, tp *tap) {
	t.Helper()
	guest, err := amqpURI(testenv.Get(t, "FERRY_TRANSPORT_URL"))
	if err != nil {
		t.Fatal(err)
	}
	tp, err = startTap(guest, []string{"agent.RegionOne", "agent.RegionTwo", "agent.RegionTwo.agent-RegionTwo", string(rpc.StatusTarget)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.stop)
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	image = newImage(t, prefix, 16)
	one := testenv.Get(t, "CEPH_REGIONONE_CONF")
	body := `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "` + image + `"}, "destination": {"region": "RegionTwo"}}}`
	var ids []string
	for i := range 2 {
		if i == 1 {
			rbd(t, one, "bench", "--io-type", "write", "--io-size", "64K", "--io-total", "2M", "--io-pattern", "rand", "volumes/"+image)
		}
		code, m := admin.do("POST", "/v1/transfers", body)
		if code != 202 {
			t.Fatalf("create: %d %v", code, m)
		}
		id := m["transfer"].(map[string]any)["id"].(string)
		t.Cleanup(func() { admin.do("DELETE", "/v1/transfers/"+id, "") })
		if tr := admin.wait(id); tr["status"] != "completed" {
			t.Fatalf("transfer %d: %v", i, tr)
		}
		ids = append(ids, id)
	}
	return image, ids[0], ids[1], tp
}

// replay sends the last tapped message of method about id again, as
// guest; a call's deadline header is dropped if it has passed (it is not
// signed: an outsider can).
func replay(t *testing.T, tp *tap, method, id string) {
	t.Helper()
	ms := tp.find(method, id)
	if len(ms) == 0 {
		t.Fatalf("no %s of %s tapped", method, id)
	}
	m := ms[len(ms)-1]
	p := m.pub
	if d, ok := p.Headers["x-ferry-deadline"].(int64); ok && time.Now().UnixMilli() > d {
		p.Headers = maps.Clone(p.Headers)
		delete(p.Headers, "x-ferry-deadline")
	}
	guest, _ := amqpURI(testenv.Get(t, "FERRY_TRANSPORT_URL"))
	if err := publish(guest, m.key, p, ""); err != nil {
		t.Fatal(err)
	}
}

// destState is what must not move once the second transfer completed: the
// Ferry snapshots on both sides and the destination's data.
func destState(image, second string) error {
	one, two := os.Getenv("CEPH_REGIONONE_CONF"), os.Getenv("CEPH_REGIONTWO_CONF")
	want := []string{"ferry-" + second}
	var errs []error
	for _, side := range []struct{ name, conf string }{{"RegionOne", one}, {"RegionTwo", two}} {
		got, err := ferrySnaps(side.conf, "volumes/"+image)
		if err != nil || !slices.Equal(got, want) {
			errs = append(errs, fmt.Errorf("volumes/%s in %s has Ferry snapshots %v (err %v), want %v (the last transfer's)", image, side.name, got, err, want))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	head, err := exportSHA(two, "volumes/"+image)
	if err != nil {
		return err
	}
	snap, err := exportSHA(two, "volumes/"+image+"@ferry-"+second)
	if err != nil {
		return err
	}
	if head != snap {
		return fmt.Errorf("the destination volumes/%s's data (sha256 %s…) is no longer the last transfer's snapshot's (%s…)", image, head[:12], snap[:12])
	}
	return nil
}

// A transfer.start of a completed transfer sent again once a newer
// transfer of the image completed must run nothing: today the source agent
// takes ferry-<old id> again (of the image as it is now), the destination
// copies the diff from the newer snapshot and names the result after the
// old transfer, and both sides remove the newer transfer's snapshot.
func TestLateStartOfSupersededTransfer(t *testing.T) {
	image, first, second, tp := replaySetup(t, "e2e-latestart")
	sent := time.Now()
	replay(t, tp, rpc.MethodTransferStart, first)
	// Whatever the agent does with it, it reports (or it ignored it).
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !slices.ContainsFunc(tp.find(rpc.MethodAgentStatus, first), func(m tapMsg) bool {
		return m.at.After(sent) && (m.event == rpc.EventCompleted || m.event == rpc.EventError)
	}) {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if err := destState(image, second); err != nil {
		t.Errorf("a late transfer.start of the superseded transfer %s took effect: %v", first, err)
	}
}

// A transfer.prepare of a completed transfer sent again once a newer
// transfer of the image completed must change nothing at the destination:
// today it plans a new full copy there (the old transfer's bases are gone),
// zeroes the image's data, and its session keeps the image locked (the
// next transfer of the image cannot fence it) until its ticket expires.
func TestLatePrepareOfSupersededTransfer(t *testing.T) {
	image, first, second, tp := replaySetup(t, "e2e-lateprepare")
	t.Cleanup(func() {
		// A session left waiting holds the destination image: restart the
		// destination agent (SIGTERM ends its sessions) so that it can go.
		two := testenv.Get(t, "CEPH_REGIONTWO_CONF")
		if removeImage(two, "volumes/"+image, 3*time.Second) == nil {
			return
		}
		if err := killAgent(testenv.Get(t, "STACK_PID_DIR"), "RegionTwo", syscall.SIGTERM); err != nil {
			t.Error(err)
		}
		if _, err := stackUp(); err != nil {
			t.Error(err)
		}
		if err := removeImage(two, "volumes/"+image, 60*time.Second); err != nil {
			t.Error(err)
		}
	})
	replay(t, tp, rpc.MethodTransferPrepare, first)
	time.Sleep(2 * time.Second)
	if err := destState(image, second); err != nil {
		t.Errorf("a late transfer.prepare of the superseded transfer %s took effect: %v", first, err)
	}
	// The image's next transfer runs at once.
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	code, m := admin.do("POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "`+image+`"}, "destination": {"region": "RegionTwo"}}}`)
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	id := m["transfer"].(map[string]any)["id"].(string)
	t.Cleanup(func() { admin.do("DELETE", "/v1/transfers/"+id, "") })
	if tr := admin.wait(id); tr["status"] != "completed" {
		t.Errorf("the next transfer of volumes/%s after a late prepare: %v", image, tr)
	}
}
