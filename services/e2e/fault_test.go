//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// The fault suite ("nothing lost, nothing forged"). With a fixed seed
// (FERRY_FAULT_SEED overrides it) it moves several images from RegionOne
// to RegionTwo a few times (a full copy, then incrementals after more
// random writes) through the stack's ferry-api and agents, and while the
// transfers of a round are queued and running it injects faults:
//
//   - every round: redelivered transfer.start, transfer.prepare and
//     transfer.finish (the real signed messages, tapped on Ferry's exchange
//     and published again verbatim), the round's real status reports
//     published again in reverse order with the agent's own broker user,
//     forged status reports (guest: a completion with a bogus digest, an
//     error, other epochs), forged commands (an unsigned transfer.start, a
//     real one with its destination altered), data connections to the
//     destination's data port destroyed (ss -K);
//   - one round each, in an order the seed draws: kill -9 of the source
//     agent, kill -9 of the destination agent (devstack/stack.sh up starts
//     them again), a broker restart as Ferry sees it (rabbitmqctl
//     close_all_connections on Ferry's vhost: every connection of ferry-api
//     and the agents drops; the machine's broker, shared with Cinder and
//     other tests, keeps running), a Ceph stall (an OSD SIGSTOPped for longer
//     than the agents' ceph_op_timeout, then SIGCONTed: never restarted);
//   - after a round: its start, prepare and reports again once complete,
//     and the start and prepare of the previous round's transfer of an image
//     (a late redelivery of a superseded transfer's commands).
//
// Transfers that end in error are retried (bounded) until they complete.
// At the end: every destination snapshot's sha256 equals its source's, no
// transfer is left non-terminal, each image keeps exactly the Ferry
// snapshot of its last transfer on each side and no forged destination
// exists, and nothing forged shows in a transfer. A table prints, for each
// kind of fault, how many were injected and survived: an injection
// survived when every transfer of its round completed (retries allowed)
// with identical snapshots on both sides, and the checks of that very
// fault hold (nothing forged took effect; nothing changed after a repeated
// or late command).

type faultKind int

const (
	fDupStart faultKind = iota
	fDupPrepare
	fDupFinish
	fReorder
	fForgedStatus
	fForgedStart
	fDropData
	fKillSource
	fKillDest
	fBroker
	fCephStall
	fLateStart
	fLatePrepare
	nFaultKinds
)

var faultNames = [nFaultKinds]string{
	fDupStart:     "redelivered transfer.start",
	fDupPrepare:   "redelivered transfer.prepare",
	fDupFinish:    "redelivered transfer.finish",
	fReorder:      "reordered real status reports",
	fForgedStatus: "forged status reports (guest)",
	fForgedStart:  "forged transfer.start",
	fDropData:     "dropped data connections",
	fKillSource:   "kill -9 source agent",
	fKillDest:     "kill -9 destination agent",
	fBroker:       "broker restart (vhost conns closed)",
	fCephStall:    "Ceph stall (OSD SIGSTOP)",
	fLateStart:    "late start of a superseded transfer",
	fLatePrepare:  "late prepare of a superseded transfer",
}

// heavyFaults happen once each, one per round.
var heavyFaults = []faultKind{fKillSource, fKillDest, fBroker, fCephStall}

// lightFaults happen in every round.
var lightFaults = []faultKind{fDupStart, fDupPrepare, fDupFinish, fReorder, fForgedStatus, fForgedStart, fDropData}

const (
	faultImages    = 4
	faultImageMiB  = 64
	faultRounds    = 4
	faultRetries   = 4
	faultStall     = 22 * time.Second // > ceph_op_timeout (15 s on the stack)
	faultSeedDflt  = 20261203
	faultSettleMax = 100 * time.Second
)

// injection is one fault injected. It survived when every transfer of its
// round completed with identical snapshots and its own check (if any)
// holds at the end.
type injection struct {
	kind   faultKind
	round  int
	detail string
	check  func() error
	// failed: a check made right after the injection failed.
	failed error
}

// faultParams are an injector's random draws, made on the test goroutine
// so that the seed fixes them.
type faultParams struct {
	delay  time.Duration
	delays []time.Duration
	pick   int
	region string
}

type faultSuite struct {
	t        *testing.T
	seed     uint64
	rng      *rand.Rand
	admin    *client
	one, two string
	pidDir   string
	logDir   string
	guest    string // broker URI: guest on Ferry's vhost (the outsider)
	agentOne string // broker URI of RegionOne's agents (replays of their reports)
	agentUsr string
	tap      *tap

	images  []string
	byRound [][]string // transfer ids, [round][image]
	all     []string

	mu         sync.Mutex
	injections []*injection
	notes      []string
	retries    [faultRounds]int
	roundBad   [faultRounds]bool // a transfer of the round did not end right
	forged     []string          // destination images of forged starts
}

func (s *faultSuite) record(in *injection) *injection {
	s.mu.Lock()
	s.injections = append(s.injections, in)
	s.mu.Unlock()
	s.t.Logf("round %d: injected %s: %s", in.round, faultNames[in.kind], in.detail)
	return in
}

// roundErrorf fails the test and round r: none of its injections survived.
func (s *faultSuite) roundErrorf(r int, format string, args ...any) {
	s.t.Helper()
	s.mu.Lock()
	s.roundBad[r] = true
	s.mu.Unlock()
	s.errorf("round %d: "+format, append([]any{r}, args...)...)
}

// fail marks injections as not survived, with the reason (a test error).
func (s *faultSuite) fail(err error, ins ...*injection) {
	s.errorf("%v", err)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, in := range ins {
		if in.failed == nil {
			in.failed = err
		}
	}
}

// errorf and fatalf fail the test with a "FAULT: " line, which
// tox-like-ci's e2e summary shows (the CI output keeps only the tail).
func (s *faultSuite) errorf(format string, args ...any) {
	s.t.Helper()
	s.t.Errorf("FAULT: "+format, args...)
}

func (s *faultSuite) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("FAULT: "+format, args...)
}

func (s *faultSuite) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.notes = append(s.notes, msg)
	s.mu.Unlock()
	s.t.Log(msg)
}

func TestFaultSuite(t *testing.T) {
	began := time.Now()
	seed := uint64(faultSeedDflt)
	if v := os.Getenv("FERRY_FAULT_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_FAULT_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("fault suite seed %d (FERRY_FAULT_SEED=%d reproduces this run)", seed, seed)
	s := &faultSuite{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		admin:  &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")},
		one:    testenv.Get(t, "CEPH_REGIONONE_CONF"),
		two:    testenv.Get(t, "CEPH_REGIONTWO_CONF"),
		pidDir: testenv.Get(t, "STACK_PID_DIR"),
		logDir: testenv.Get(t, "FERRY_LOG_DIR"),
	}
	var err error
	if s.guest, err = amqpURI(testenv.Get(t, "FERRY_TRANSPORT_URL")); err != nil {
		t.Fatal(err)
	}
	agentURL, err := confValue(testenv.Get(t, "FERRY_AGENT_REGIONONE_CONF"), "transport_url")
	if err != nil {
		t.Fatal(err)
	}
	if s.agentOne, err = amqpURI(agentURL); err != nil {
		t.Fatal(err)
	}
	s.agentUsr = strings.SplitN(strings.TrimPrefix(strings.TrimPrefix(s.agentOne, "amqps://"), "amqp://"), ":", 2)[0]
	s.tap, err = startTap(s.guest, []string{"agent.RegionOne", "agent.RegionTwo", "agent.RegionOne.agent-RegionOne",
		"agent.RegionTwo.agent-RegionTwo", string(rpc.StatusTarget)})
	if err != nil {
		t.Fatalf("tap on Ferry's exchange: %v", err)
	}
	t.Cleanup(s.tap.stop)
	t.Cleanup(s.cleanup)
	t.Cleanup(func() { // an OSD must never stay stopped
		for _, r := range []string{"RegionOne", "RegionTwo"} {
			if pid, err := pidOf(filepath.Join(s.pidDir, "ceph-"+r+"-osd.0.pid")); err == nil {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}
	})
	s.waitAgentsUp(60 * time.Second)

	// The schedule: the heavy faults one per round, in the seed's order.
	heavy := slices.Clone(heavyFaults)
	s.rng.Shuffle(len(heavy), func(i, j int) { heavy[i], heavy[j] = heavy[j], heavy[i] })
	schedule := make([][]faultKind, faultRounds)
	for r := range schedule {
		schedule[r] = append(slices.Clone(lightFaults), heavy[r%len(heavy)])
		t.Logf("round %d: %s + light faults", r, faultNames[heavy[r%len(heavy)]])
	}

	s.makeImages()
	s.byRound = make([][]string, faultRounds)
	// The table prints even when a round gives up (t.Fatal).
	defer func() { s.summary(time.Since(began)) }()
	for r := range faultRounds {
		s.round(r, schedule[r])
	}
	s.finalChecks()
}

// waitAgentsUp waits until both stack agents heartbeat as up.
func (s *faultSuite) waitAgentsUp(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		m, err := s.admin.get("/v1/services")
		up := 0
		if err == nil {
			for _, sv := range m["services"].([]any) {
				sv := sv.(map[string]any)
				if (sv["host"] == "agent-RegionOne" || sv["host"] == "agent-RegionTwo") && sv["state"] == "up" {
					up++
				}
			}
		}
		if up == 2 {
			return
		}
		if time.Now().After(deadline) {
			s.fatalf("the stack's agents are not both up: %v %v", err, m)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// makeImages writes faultImages images of random data (from the seed).
func (s *faultSuite) makeImages() {
	dir := s.t.TempDir()
	buf := make([]byte, faultImageMiB<<20)
	for i := range faultImages {
		name := fmt.Sprintf("fault-%d-%d-%d", s.seed, time.Now().UnixNano()%1e9, i)
		s.images = append(s.images, name)
		for j := range buf {
			buf[j] = byte(s.rng.Uint32())
		}
		// Leave holes: a quarter of the 4 MiB objects stay unallocated.
		for o := 0; o < len(buf); o += 4 << 20 {
			if s.rng.IntN(4) == 0 {
				clear(buf[o : o+4<<20])
			}
		}
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, buf, 0o600); err != nil {
			s.fatalf("%v", err)
		}
		rbd(s.t, s.one, "import", "--no-progress", f, "volumes/"+name)
		os.Remove(f)
	}
}

// writeMore writes random data over parts of each image (the next
// incremental's changes).
func (s *faultSuite) writeMore() {
	for _, img := range s.images {
		mib := 1 + s.rng.IntN(8)
		rbd(s.t, s.one, "bench", "--io-type", "write", "--io-size", "64K", "--io-total", fmt.Sprintf("%dM", mib),
			"--io-pattern", "rand", "volumes/"+img)
	}
}

func (s *faultSuite) submit(r int) []string {
	var ids []string
	for i, img := range s.images {
		code, m := s.admin.do("POST", "/v1/transfers", fmt.Sprintf(`{"transfer": {"name": "fault-r%d-i%d", "source": {"region": "RegionOne", "pool": "volumes", "image": %q}, "destination": {"region": "RegionTwo"}}}`, r, i, img))
		if code != 202 {
			s.fatalf("create: %d %v", code, m)
		}
		ids = append(ids, m["transfer"].(map[string]any)["id"].(string))
	}
	s.byRound[r] = ids
	s.all = append(s.all, ids...)
	return ids
}

func (s *faultSuite) draw(k faultKind) faultParams {
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+s.rng.IntN(hi-lo+1)) * time.Millisecond }
	p := faultParams{pick: s.rng.IntN(faultImages), region: []string{"RegionOne", "RegionTwo"}[s.rng.IntN(2)]}
	switch k {
	case fDupStart, fDupPrepare:
		p.delay = ms(0, 400)
	case fDupFinish:
		p.delay = ms(0, 100)
	case fReorder, fForgedStatus, fForgedStart:
		p.delay = ms(100, 1500)
	case fDropData:
		p.delays = []time.Duration{ms(50, 400), ms(50, 400), ms(50, 400)}
	case fKillSource, fKillDest, fBroker:
		p.delay = ms(100, 1500)
		p.delays = []time.Duration{ms(200, 2000)} // down for this long
	case fCephStall:
		p.delay = ms(100, 800)
	}
	return p
}

func (s *faultSuite) round(r int, kinds []faultKind) {
	start := time.Now()
	if r > 0 {
		s.writeMore()
	}
	params := map[faultKind]faultParams{}
	for _, k := range kinds {
		params[k] = s.draw(k)
	}
	ids := s.submit(r)
	var wg sync.WaitGroup
	errs := make(chan error, len(kinds))
	for _, k := range kinds {
		if k == fCephStall {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.inject(k, r, ids, params[k]); err != nil {
				errs <- fmt.Errorf("injecting %s: %w", faultNames[k], err)
			}
		}()
	}
	if slices.Contains(kinds, fCephStall) {
		s.cephStall(r, ids, params[fCephStall])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		s.roundErrorf(r, "%v", err)
	}
	final := s.settle(r, ids)
	s.verify(r, ids, final)
	s.afterRound(r, ids)
	s.t.Logf("round %d done in %.1f s", r, time.Since(start).Seconds())
}

// inject runs one fault of round r against its transfers ids.
func (s *faultSuite) inject(k faultKind, r int, ids []string, p faultParams) error {
	switch k {
	case fDupStart, fDupPrepare, fDupFinish:
		method := map[faultKind]string{fDupStart: rpc.MethodTransferStart, fDupPrepare: rpc.MethodTransferPrepare,
			fDupFinish: rpc.MethodTransferFinish}[k]
		m, ok := s.tap.await(method, 60*time.Second, ids...)
		if !ok {
			s.note("round %d: no %s of the round seen on the tap: not redelivered", r, method)
			return nil
		}
		time.Sleep(p.delay)
		if err := publish(s.guest, m.key, m.pub, ""); err != nil {
			return err
		}
		s.record(&injection{kind: k, round: r, detail: fmt.Sprintf("%s of %s epoch %d again %s after the original", method, short(m.transferID), m.epoch, time.Since(m.at).Round(time.Millisecond))})
	case fReorder:
		time.Sleep(p.delay)
		n, err := s.replayReports(ids)
		if err != nil {
			return err
		}
		if n > 0 {
			s.record(&injection{kind: k, round: r, detail: fmt.Sprintf("%d reports of the round so far again, newest first, mid-round", n)})
		}
	case fForgedStatus:
		time.Sleep(p.delay)
		return s.forgeReports(r, ids[p.pick])
	case fForgedStart:
		time.Sleep(p.delay)
		return s.forgeStarts(r, ids[p.pick])
	case fDropData:
		for _, d := range p.delays {
			time.Sleep(d)
			out, err := exec.Command("ss", "-K", "-t", "dst", "127.0.0.1", "dport", "=", ":9792").CombinedOutput()
			if err != nil {
				return fmt.Errorf("ss -K: %w: %s", err, out)
			}
			if n := strings.Count(string(out), "ESTAB"); n > 0 {
				s.record(&injection{kind: k, round: r, detail: fmt.Sprintf("%d connections to the destination's data port destroyed", n)})
			}
		}
	case fKillSource, fKillDest:
		region := "RegionOne"
		if k == fKillDest {
			region = "RegionTwo"
		}
		time.Sleep(p.delay)
		states := s.states(ids)
		if err := killAgent(s.pidDir, region, syscall.SIGKILL); err != nil {
			return err
		}
		time.Sleep(p.delays[0])
		took, err := stackUp()
		if err != nil {
			return err
		}
		s.record(&injection{kind: k, round: r, detail: fmt.Sprintf("agent-%s killed %s into the round (transfers %s), started again by stack.sh up in %.1f s",
			region, p.delay, states, took.Seconds())})
	case fBroker:
		time.Sleep(p.delay)
		states := s.states(ids)
		began := time.Now()
		out, err := exec.Command("rabbitmqctl", "-q", "close_all_connections", "--vhost", "ferry_stack", "ferry fault suite").CombinedOutput()
		if err != nil {
			return fmt.Errorf("rabbitmqctl close_all_connections: %w: %s", err, out)
		}
		took := time.Since(began)
		// The agents and ferry-api reconnect on their own; wait for them.
		back := time.Now()
		for !s.connected() && time.Since(back) < 30*time.Second {
			time.Sleep(200 * time.Millisecond)
		}
		s.record(&injection{kind: k, round: r, detail: fmt.Sprintf("every connection of Ferry's vhost closed (transfers %s; rabbitmqctl %.1f s), reconnected after %.1f s",
			states, took.Seconds(), time.Since(back).Seconds())})
	}
	return nil
}

// connected reports whether ferry-api and both agents are connected to
// Ferry's vhost again (three users with connections).
func (s *faultSuite) connected() bool {
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "-p", "ferry_stack", "user").Output()
	if err != nil {
		return false
	}
	o := string(out)
	return strings.Contains(o, "ferry-api") && strings.Contains(o, "ferry-agent-RegionOne") && strings.Contains(o, "ferry-agent-RegionTwo")
}

// states are the round's transfers' statuses, for the log.
func (s *faultSuite) states(ids []string) string {
	var st []string
	for _, id := range ids {
		m, err := s.admin.get("/v1/transfers/" + id)
		if err != nil {
			st = append(st, "?")
			continue
		}
		st = append(st, fmt.Sprint(m["transfer"].(map[string]any)["status"]))
	}
	return strings.Join(st, ",")
}

// replayReports publishes again, newest first, the real status reports of
// ids tapped so far, with the agent's own broker user: a redelivery out of
// order, which the API must take for what it is.
func (s *faultSuite) replayReports(ids []string) (int, error) {
	ms := s.tap.find(rpc.MethodAgentStatus, ids...)
	n := 0
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].pub.UserId != s.agentUsr {
			continue
		}
		if err := publish(s.agentOne, ms[i].key, ms[i].pub, s.agentUsr); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// forgeReports publishes, as guest, reports about transfer id: a
// completion with a bogus digest, an error, and both for other epochs. The
// API must refuse them all (not from the region's agents).
func (s *faultSuite) forgeReports(r int, id string) error {
	epoch := int64(1)
	for _, m := range s.tap.find(rpc.MethodTransferStart, id) {
		epoch = max(epoch, m.epoch)
	}
	nonce := fmt.Sprintf("forged-%d-%d-%s", s.seed, r, short(id))
	digest := "blake3-sha256:" + strings.Repeat("f0", 32)
	var sent int
	for _, e := range []int64{epoch, epoch - 1, epoch + 1} {
		if e <= 0 {
			continue
		}
		for _, ev := range []rpc.StatusEvent{
			{TransferID: id, Event: rpc.EventCompleted, Epoch: e, Region: "RegionOne", Host: "agent-RegionOne", Time: time.Now().UTC(),
				Digest: digest, Snapshot: "ferry-" + nonce, Mode: "full", BytesDone: 1, BytesTotal: 1},
			{TransferID: id, Event: rpc.EventError, Epoch: e, Region: "RegionOne", Host: "agent-RegionOne", Time: time.Now().UTC(), Error: nonce},
		} {
			p, err := envelope(rpc.MethodAgentStatus, "req-"+nonce, ev)
			if err != nil {
				return err
			}
			if err := publish(s.guest, string(rpc.StatusTarget), p, "guest"); err != nil {
				return err
			}
			sent++
		}
	}
	s.record(&injection{kind: fForgedStatus, round: r, detail: fmt.Sprintf("%d forged reports about %s (completed with digest %s…, error %q; epochs %d±1)", sent, short(id), digest[:20], nonce, epoch),
		check: func() error {
			m, err := s.admin.get("/v1/transfers/" + id)
			if err != nil {
				return err
			}
			tr := m["transfer"].(map[string]any)
			if strings.Contains(fmt.Sprint(tr), nonce) || fmt.Sprint(tr["digest"]) == digest {
				return fmt.Errorf("transfer %s shows the forgery: %v", id, tr)
			}
			ev, err := s.admin.get("/v1/transfers/" + id + "/events")
			if err != nil {
				return err
			}
			if e := fmt.Sprint(ev); strings.Contains(e, nonce) || strings.Contains(e, digest) {
				return fmt.Errorf("transfer %s's events show the forgery: %s", id, e)
			}
			return nil
		}})
	return nil
}

// forgeStarts publishes, as guest, an unsigned transfer.start and a real
// signed one with its destination altered, each asking RegionOne to copy
// an image of the suite to a new destination name. Neither may run: the
// agent refuses both (its log names their request ids) and the
// destinations never appear.
func (s *faultSuite) forgeStarts(r int, id string) error {
	real, ok := s.tap.await(rpc.MethodTransferStart, 30*time.Second, id)
	if !ok {
		return fmt.Errorf("no transfer.start of %s seen", id)
	}
	env, err := rpc.Decode(real.pub.Body)
	if err != nil {
		return err
	}
	var st rpc.TransferStart
	if err := env.DecodeBody(&st); err != nil {
		return err
	}
	// 1. Unsigned, a transfer of its own.
	nonce := fmt.Sprintf("%d-%d-%s", s.seed, r, short(id))
	u := st
	u.TransferID = fmt.Sprintf("fa170000-%04d-4000-8000-%012d", r, s.seed%1e12)
	u.Epoch = 1
	u.Destination = rpc.Location{Region: "RegionTwo", Pool: "volumes", Image: "fault-forged-unsigned-" + nonce}
	unsigned, err := envelope(rpc.MethodTransferStart, "req-fault-unsigned-"+nonce, u)
	if err != nil {
		return err
	}
	// 2. The real signature over an altered body.
	a := st
	a.Destination = rpc.Location{Region: "RegionTwo", Pool: "volumes", Image: "fault-forged-altered-" + nonce}
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	alt := env
	alt.Body, alt.RequestID = body, "req-fault-altered-"+nonce
	data, err := alt.Marshal()
	if err != nil {
		return err
	}
	altered := real.pub
	altered.Body, altered.CorrelationId, altered.MessageId = data, "", alt.RequestID
	s.mu.Lock()
	s.forged = append(s.forged, u.Destination.Image, a.Destination.Image)
	s.mu.Unlock()
	for _, p := range []amqp091.Publishing{unsigned, altered} {
		if err := publish(s.guest, string(rpc.AgentTarget("RegionOne")), p, ""); err != nil {
			return err
		}
	}
	for _, f := range []struct{ what, req, image string }{
		{"unsigned", "req-fault-unsigned-" + nonce, u.Destination.Image},
		{"altered", "req-fault-altered-" + nonce, a.Destination.Image},
	} {
		s.record(&injection{kind: fForgedStart, round: r, detail: fmt.Sprintf("%s transfer.start to volumes/%s (request %s)", f.what, f.image, f.req),
			check: func() error {
				if imageExists(s.two, "volumes/"+f.image) {
					return fmt.Errorf("the forged destination volumes/%s exists in RegionTwo", f.image)
				}
				b, err := os.ReadFile(filepath.Join(s.logDir, "ferry-agent-RegionOne.log"))
				if err != nil {
					return err
				}
				for _, line := range strings.Split(string(b), "\n") {
					if strings.Contains(line, "request_id="+f.req) && strings.Contains(line, "command refused") {
						return nil
					}
				}
				return fmt.Errorf("agent-RegionOne's log does not show the %s start %s refused", f.what, f.req)
			}})
	}
	return nil
}

// cephStall stops region's OSD for faultStall (longer than the agents'
// ceph_op_timeout) and continues it. A detached shell does both, so that
// the OSD continues even if this test dies meanwhile. While it is stopped
// the region's agent must keep heartbeating (up), whatever its health
// probe says.
func (s *faultSuite) cephStall(r int, ids []string, p faultParams) {
	time.Sleep(p.delay)
	pid, err := pidOf(filepath.Join(s.pidDir, "ceph-"+p.region+"-osd.0.pid"))
	if err != nil {
		s.errorf("ceph stall: %v", err)
		return
	}
	states := s.states(ids)
	cmd := exec.Command("sh", "-c", fmt.Sprintf("kill -STOP %d && sleep %d; kill -CONT %d", pid, int(faultStall.Seconds()), pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		s.errorf("ceph stall: %v", err)
		return
	}
	began := time.Now()
	host := "agent-" + p.region
	var seen []string
	down := 0
	for time.Since(began) < faultStall {
		time.Sleep(2 * time.Second)
		m, err := s.admin.get("/v1/services")
		if err != nil {
			continue
		}
		for _, sv := range m["services"].([]any) {
			sv := sv.(map[string]any)
			if sv["host"] != host {
				continue
			}
			if sv["state"] != "up" {
				down++
			}
			h := "none"
			if ch, ok := sv["ceph_health"].(map[string]any); ok {
				h = fmt.Sprint(ch["status"])
				if e, ok := ch["error"].(string); ok && e != "" {
					h += " (" + e + ")"
				}
			}
			if len(seen) == 0 || seen[len(seen)-1] != h {
				seen = append(seen, h)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		s.errorf("ceph stall: %v", err)
	}
	recovery := s.cephRecover(p.region)
	after := s.states(ids)
	in := s.record(&injection{kind: fCephStall, round: r, detail: fmt.Sprintf("%s osd.0 (pid %d) stopped for %s (transfers before %s, after %s); %s reported down %d times; its ceph_health seen: %s; %s",
		p.region, pid, faultStall, states, after, host, down, strings.Join(seen, " | "), recovery)})
	if down > 0 {
		s.fail(fmt.Errorf("round %d: %s was reported down %d times while its OSD was stopped: its heartbeat waited for Ceph", r, host, down), in)
	}
}

// cephRecover waits for region's cluster to serve again after the stall:
// no slow ops, no laggy placement group. A memstore OSD continued after a
// long SIGSTOP on a loaded machine has been seen keeping laggy PGs and
// blocked ops for minutes; then it is marked down, which makes it re-peer
// (what an operator does), and the recovery says so. Ferry's part (errors
// within ceph_op_timeout, then retries) is what the suite checks.
func (s *faultSuite) cephRecover(region string) string {
	conf := testenv.Get(s.t, "CEPH_"+strings.ToUpper(region)+"_CONF")
	healthy := func() (bool, string) {
		out, err := exec.Command("timeout", "10", "ceph", "-c", conf, "health", "-f", "json").Output()
		if err != nil {
			return false, err.Error()
		}
		laggy, err := exec.Command("timeout", "10", "ceph", "-c", conf, "pg", "ls", "laggy", "-f", "json").Output()
		if err != nil {
			return false, err.Error()
		}
		h := string(out)
		return !strings.Contains(h, "SLOW_OPS") && !strings.Contains(string(laggy), "pgid"), h
	}
	// Healthy means healthy for 40 s in a row: an OSD reports ops as
	// slow only after osd_op_complaint_time (30 s), so a check right
	// after SIGCONT says nothing yet.
	began := time.Now()
	var since time.Time
	var h string
	for time.Since(began) < 75*time.Second {
		ok, detail := healthy()
		switch {
		case !ok:
			since, h = time.Time{}, detail
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= 40*time.Second:
			return fmt.Sprintf("the cluster served again after the OSD continued (healthy for %.0f s)", time.Since(since).Seconds())
		}
		if !ok && time.Since(began) > 45*time.Second {
			break
		}
		time.Sleep(time.Second)
	}
	exec.Command("timeout", "20", "ceph", "-c", conf, "osd", "down", "0").Run()
	for time.Since(began) < 120*time.Second {
		if ok, _ := healthy(); ok {
			return fmt.Sprintf("the OSD kept slow ops or laggy PGs 45 s after it continued (%s): marked down to re-peer, served again after %.0f s", strings.TrimSpace(h), time.Since(began).Seconds())
		}
		time.Sleep(time.Second)
	}
	s.errorf("ceph stall: %s did not recover within 120 s: %s", region, h)
	return "no recovery"
}

// settle waits until every transfer of the round is terminal, retrying
// those that end in error (at most faultRetries times each). It returns
// the transfers as they ended.
func (s *faultSuite) settle(r int, ids []string) map[string]map[string]any {
	deadline := time.Now().Add(faultSettleMax)
	attempts := map[string]int{}
	final := map[string]map[string]any{}
	for len(final) < len(ids) {
		if time.Now().After(deadline) {
			var stuck []string
			for _, id := range ids {
				if final[id] == nil {
					_, m := s.admin.do("GET", "/v1/transfers/"+id, "")
					stuck = append(stuck, fmt.Sprintf("%s %v", id, m["transfer"].(map[string]any)["status"]))
				}
			}
			s.roundBad[r] = true
			s.fatalf("round %d: transfers still not completed after %s: %v", r, faultSettleMax, stuck)
		}
		for _, id := range ids {
			if final[id] != nil {
				continue
			}
			_, m := s.admin.do("GET", "/v1/transfers/"+id, "")
			tr := m["transfer"].(map[string]any)
			switch tr["status"] {
			case "completed":
				final[id] = tr
			case "cancelled":
				s.roundErrorf(r, "transfer %s ended cancelled: %v", id, tr)
				final[id] = tr
			case "error":
				if attempts[id] >= faultRetries {
					s.roundBad[r] = true
					s.fatalf("round %d: transfer %s still fails after %d retries: %v", r, id, faultRetries, tr["error"])
				}
				attempts[id]++
				s.retries[r]++
				s.t.Logf("round %d: transfer %s ended in error (%v): retry %d", r, short(id), tr["error"], attempts[id])
				if code, m := s.admin.do("POST", "/v1/transfers/"+id+"/action", `{"retry": null}`); code != 202 {
					s.roundErrorf(r, "retry of %s: %d %v", id, code, m)
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return final
}

// verify compares each completed transfer's snapshot on both sides and its
// digest with the real agent's report.
func (s *faultSuite) verify(r int, ids []string, final map[string]map[string]any) {
	type sum struct {
		i     int
		a, b  string
		errAB error
	}
	sums := make(chan sum, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		if final[id]["status"] != "completed" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := "volumes/" + s.images[i] + "@ferry-" + id
			a, err1 := exportSHA(s.one, spec)
			b, err2 := exportSHA(s.two, spec)
			if err1 == nil {
				err1 = err2
			}
			sums <- sum{i: i, a: a, b: b, errAB: err1}
		}()
	}
	wg.Wait()
	close(sums)
	for x := range sums {
		id := ids[x.i]
		if x.errAB != nil {
			s.roundErrorf(r, "%s: %v", id, x.errAB)
			continue
		}
		if x.a != x.b {
			s.roundErrorf(r, "volumes/%s@ferry-%s differs: source %s, destination %s", s.images[x.i], id, x.a, x.b)
		}
	}
	for _, id := range ids {
		tr := final[id]
		digest := fmt.Sprint(tr["digest"])
		var reported []string
		for _, m := range s.tap.find(rpc.MethodAgentStatus, id) {
			if m.event == rpc.EventCompleted && m.pub.UserId == s.agentUsr {
				reported = append(reported, m.digest)
			}
		}
		switch {
		case !strings.HasPrefix(digest, "blake3-sha256:"):
			s.roundErrorf(r, "transfer %s completed with digest %s", id, digest)
		case len(reported) == 0:
			s.note("round %d: the tap saw no completion report of %s (its connection was dropped)", r, short(id))
		case !slices.Contains(reported, digest):
			s.roundErrorf(r, "transfer %s completed with digest %s, the agent reported %v", id, digest, reported)
		}
		if want := map[bool]string{true: "full", false: "incremental"}[r == 0]; tr["mode"] != want {
			s.note("round %d: transfer %s ran %v, not %s", r, short(id), tr["mode"], want)
		}
	}
}

// afterRound sends again, once the round is complete, a start and a
// prepare of one of its transfers and all its reports: nothing may change,
// not the transfers, not the snapshots. Then a late command of the
// previous round's transfer of another image: its start (rounds before the
// last) or its prepare (the last round, as a prepare left waiting holds
// its image).
func (s *faultSuite) afterRound(r int, ids []string) {
	before := map[string]string{}
	for _, id := range ids {
		before[id] = s.fingerprint(id)
	}
	pick := s.rng.IntN(len(ids))
	other := (pick + 1 + s.rng.IntN(len(ids)-1)) % len(ids)
	id := ids[pick]
	var post []*injection
	for _, method := range []string{rpc.MethodTransferStart, rpc.MethodTransferPrepare} {
		ms := s.tap.find(method, id)
		if len(ms) == 0 {
			s.note("round %d: no %s of %s tapped", r, method, short(id))
			continue
		}
		m := ms[len(ms)-1]
		if err := publish(s.guest, m.key, m.pub, ""); err != nil {
			s.errorf("round %d: %v", r, err)
			continue
		}
		k := map[string]faultKind{rpc.MethodTransferStart: fDupStart, rpc.MethodTransferPrepare: fDupPrepare}[method]
		post = append(post, s.record(&injection{kind: k, round: r, detail: fmt.Sprintf("%s of %s (epoch %d) again after it completed", method, short(id), m.epoch)}))
	}
	if n, err := s.replayReports(ids); err != nil {
		s.errorf("round %d: %v", r, err)
	} else if n > 0 {
		post = append(post, s.record(&injection{kind: fReorder, round: r, detail: fmt.Sprintf("%d real reports of the round again, newest first, after it completed", n)}))
	}
	time.Sleep(3 * time.Second)
	for _, id := range ids {
		if now := s.fingerprint(id); now != before[id] {
			s.fail(fmt.Errorf("round %d: transfer %s changed after repeated commands and reports:\nbefore %s\nafter  %s", r, id, before[id], now), post...)
		}
	}
	if err := s.checkImage(r, pick, "after its start, prepare and reports were sent again"); err != nil {
		s.fail(err, post...)
	}
	if r == 0 {
		return
	}
	method, kind := rpc.MethodTransferStart, fLateStart
	if r == faultRounds-1 {
		method, kind = rpc.MethodTransferPrepare, fLatePrepare
	}
	prev := s.byRound[r-1][other]
	ms := s.tap.find(method, prev)
	if len(ms) == 0 {
		s.note("round %d: no %s of %s tapped: no late replay", r, method, short(prev))
		return
	}
	m := ms[len(ms)-1]
	p := m.pub
	how := "verbatim, within its call deadline"
	if method == rpc.MethodTransferStart {
		how = "verbatim, its signature valid for [api] command_ttl"
	}
	if d, ok := p.Headers["x-ferry-deadline"].(int64); ok && time.Now().UnixMilli() > d {
		// The transport drops a call past its deadline: an outsider
		// removes the header (it is not signed).
		p.Headers = maps.Clone(p.Headers)
		delete(p.Headers, "x-ferry-deadline")
		how = "past its call deadline, the deadline header removed"
	}
	replayed := time.Now()
	if err := publish(s.guest, m.key, p, ""); err != nil {
		s.errorf("round %d: %v", r, err)
		return
	}
	in := s.record(&injection{kind: kind, round: r, detail: fmt.Sprintf("%s of the previous round's %s (epoch %d) of volumes/%s again %s after the original (%s), once %s completed",
		method, short(prev), m.epoch, s.images[other], time.Since(m.at).Round(time.Second), how, short(ids[other]))})
	time.Sleep(3 * time.Second)
	if method == rpc.MethodTransferStart {
		// What a late start runs shows in its reports (to ferry.status).
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if slices.ContainsFunc(s.tap.find(rpc.MethodAgentStatus, prev), func(rep tapMsg) bool {
				return rep.at.After(replayed) && (rep.event == rpc.EventCompleted || rep.event == rpc.EventError)
			}) {
				s.note("round %d: the late start of %s ran again: the agent reported on it", r, short(prev))
				break
			}
		}
	}
	if now := s.fingerprint(ids[other]); now != before[ids[other]] {
		s.fail(fmt.Errorf("round %d: transfer %s changed after a late %s of %s:\nbefore %s\nafter  %s", r, ids[other], method, prev, before[ids[other]], now), in)
	}
	if err := s.checkImage(r, other, fmt.Sprintf("after a late %s of the previous round's transfer %s", method, prev)); err != nil {
		s.fail(err, in)
	}
}

// settleWait bounds how long checkImage waits for the source's clean-up of
// a base superseded by a completion its agent did not see: ferry-api's
// transfer.settle, or the agent's retry after a stall, runs once the
// image's exclusive lock is free again, which a killed agent holds until
// the cluster breaks it (its watch timeout).
const settleWait = 45 * time.Second

// checkImage: image i keeps exactly its last transfer's snapshot on each
// side (the source's superseded base gone within settleWait), and the
// destination's data (its head) is that snapshot's.
func (s *faultSuite) checkImage(r, i int, after string) error {
	img, id := s.images[i], s.byRound[r][i]
	want := []string{"ferry-" + id}
	var errs []error
	began := time.Now()
	for {
		errs = errs[:0]
		for _, side := range []struct{ name, conf string }{{"RegionOne", s.one}, {"RegionTwo", s.two}} {
			got, err := ferrySnaps(side.conf, "volumes/"+img)
			if err != nil || !slices.Equal(got, want) {
				errs = append(errs, fmt.Errorf("round %d: %s, volumes/%s in %s has Ferry snapshots %v (err %v) %s later, want %v (its last transfer)",
					r, after, img, side.name, got, err, time.Since(began).Round(time.Second), want))
			}
		}
		if len(errs) == 0 || time.Since(began) > settleWait {
			break
		}
		time.Sleep(time.Second)
	}
	if waited := time.Since(began); len(errs) == 0 && waited > 2*time.Second {
		s.note("round %d: %s, volumes/%s's superseded snapshots went after %s", r, after, img, waited.Round(time.Second))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	head, err := exportSHA(s.two, "volumes/"+img)
	if err != nil {
		return err
	}
	snap, err := exportSHA(s.two, "volumes/"+img+"@ferry-"+id)
	if err != nil {
		return err
	}
	if head != snap {
		return fmt.Errorf("round %d: %s, the destination volumes/%s's data (sha256 %s…) is no longer its last snapshot ferry-%s's (%s…)", r, after, img, head[:12], id, snap[:12])
	}
	return nil
}

// fingerprint is what must not change once a transfer completed: its
// status, digest, snapshot and events.
func (s *faultSuite) fingerprint(id string) string {
	_, m := s.admin.do("GET", "/v1/transfers/"+id, "")
	tr := m["transfer"].(map[string]any)
	_, ev := s.admin.do("GET", "/v1/transfers/"+id+"/events", "")
	return fmt.Sprintf("status=%v digest=%v mode=%v bytes=%v events=%d", tr["status"], tr["digest"], tr["mode"], tr["bytes_transferred"], len(ev["events"].([]any)))
}

// finalChecks: policy on both sides, no forged destination, every
// transfer terminal, the injections' own checks.
func (s *faultSuite) finalChecks() {
	for _, id := range s.all {
		_, m := s.admin.do("GET", "/v1/transfers/"+id, "")
		if st := m["transfer"].(map[string]any)["status"]; st != "completed" {
			s.errorf("transfer %s ends %v", id, st)
		}
	}
	last := len(s.byRound) - 1
	for last >= 0 && s.byRound[last] == nil {
		last--
	}
	if last >= 0 {
		for i, img := range s.images {
			want := []string{"ferry-" + s.byRound[last][i]}
			for _, side := range []struct{ name, conf string }{{"RegionOne", s.one}, {"RegionTwo", s.two}} {
				got, err := ferrySnaps(side.conf, "volumes/"+img)
				if err != nil || !slices.Equal(got, want) {
					s.errorf("policy: volumes/%s in %s has Ferry snapshots %v (err %v), want exactly %v", img, side.name, got, err, want)
				}
			}
		}
	}
	for _, f := range s.forged {
		for _, conf := range []string{s.one, s.two} {
			if imageExists(conf, "volumes/"+f) {
				s.errorf("forged destination volumes/%s exists", f)
			}
		}
	}
}

// summary checks each injection and prints the table.
func (s *faultSuite) summary(took time.Duration) {
	var injected, survived [nFaultKinds]int
	for _, in := range s.injections {
		injected[in.kind]++
		ok := !s.roundBad[in.round] && in.failed == nil
		if ok && in.check != nil {
			if err := in.check(); err != nil {
				s.errorf("round %d: %s not survived: %v", in.round, faultNames[in.kind], err)
				ok = false
			}
		}
		if ok {
			survived[in.kind]++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "fault suite, seed %d, %d images of %d MiB, %d rounds, %.1f s:\n", s.seed, faultImages, faultImageMiB, faultRounds, took.Seconds())
	fmt.Fprintf(&b, "  %-40s %8s %8s\n", "fault", "injected", "survived")
	total := 0
	for k := range nFaultKinds {
		fmt.Fprintf(&b, "  %-40s %8d %8d\n", faultNames[k], injected[k], survived[k])
		total += injected[k]
		if injected[k] == 0 {
			s.errorf("no %s was injected", faultNames[k])
		}
	}
	fmt.Fprintf(&b, "  %-40s %8d\n", "total", total)
	fmt.Fprintf(&b, "  retries of transfers ended in error, by round: %v\n", s.retries)
	for _, n := range s.notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	s.t.Log(b.String())
}

// cleanup deletes the suite's transfers and images (both clusters). A
// destination session may still hold an image (a late prepare): then the
// destination agent is restarted (SIGTERM: its sessions end, their locks
// go) and the removal tried again.
func (s *faultSuite) cleanup() {
	for _, id := range s.all {
		s.admin.do("DELETE", "/v1/transfers/"+id, "")
	}
	names := append(slices.Clone(s.images), s.forged...)
	var failed []string
	for _, n := range names {
		for _, conf := range []string{s.one, s.two} {
			if err := removeImage(conf, "volumes/"+n, 5*time.Second); err != nil {
				failed = append(failed, conf+" "+n)
			}
		}
	}
	if len(failed) == 0 {
		return
	}
	s.t.Logf("images still held (%v): restarting agent-RegionTwo", failed)
	if err := killAgent(s.pidDir, "RegionTwo", syscall.SIGTERM); err != nil {
		s.errorf("cleanup: %v", err)
	}
	if _, err := stackUp(); err != nil {
		s.errorf("cleanup: %v", err)
	}
	for _, f := range failed {
		conf, n, _ := strings.Cut(f, " ")
		if err := removeImage(conf, "volumes/"+n, 60*time.Second); err != nil {
			s.errorf("cleanup: %v", err)
		}
	}
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
