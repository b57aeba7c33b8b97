//go:build e2e

package e2e

// Tools of the fault suite (fault_test.go): a tap on Ferry's exchange that
// keeps copies of the real messages, a publisher that sends them again (a
// redelivery) or sends forged ones, and the stack's processes and sockets
// the faults act on. Nothing here calls t.Fatal: the injectors run in
// goroutines and return errors.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
)

// headerReplay marks what the suite publishes, so that its tap ignores it.
const headerReplay = "x-ferry-fault-replay"

// tapMsg is one message seen on Ferry's exchange.
type tapMsg struct {
	key        string
	method     string
	transferID string
	event      string
	epoch      int64
	digest     string
	at         time.Time
	pub        amqp091.Publishing
}

// tap is a queue of its own bound to Ferry's exchange with the agents'
// routing keys and ferry.status: a copy of every real message. It
// reconnects after the broker drops it.
type tap struct {
	uri     string
	keys    []string
	mu      sync.Mutex
	msgs    []tapMsg
	done    chan struct{}
	stopped chan struct{}
}

func startTap(uri string, keys []string) (*tap, error) {
	tp := &tap{uri: uri, keys: keys, done: make(chan struct{}), stopped: make(chan struct{})}
	ready := make(chan error, 1)
	go tp.run(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return tp, nil
}

func (tp *tap) stop() {
	close(tp.done)
	<-tp.stopped
}

func (tp *tap) run(ready chan<- error) {
	defer close(tp.stopped)
	first := true
	for {
		err := tp.session(func() {
			if first {
				first = false
				ready <- nil
			}
		})
		if first {
			ready <- err
			return
		}
		select {
		case <-tp.done:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (tp *tap) session(up func()) error {
	conn, err := amqp091.Dial(tp.uri)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	for _, k := range tp.keys {
		if err := ch.QueueBind(q.Name, k, "ferry", false, nil); err != nil {
			return err
		}
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return err
	}
	up()
	for {
		select {
		case <-tp.done:
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("tap: delivery channel closed")
			}
			if _, mine := d.Headers[headerReplay]; !mine {
				tp.add(d)
			}
		}
	}
}

func (tp *tap) add(d amqp091.Delivery) {
	env, err := rpc.Decode(d.Body)
	if err != nil {
		return
	}
	var b struct {
		TransferID string `json:"transfer_id"`
		Event      string `json:"event"`
		Epoch      int64  `json:"epoch"`
		Digest     string `json:"digest"`
	}
	_ = json.Unmarshal(env.Body, &b)
	m := tapMsg{key: d.RoutingKey, method: env.Method, transferID: b.TransferID, event: b.Event, epoch: b.Epoch,
		digest: b.Digest, at: time.Now(), pub: amqp091.Publishing{
			Headers: maps.Clone(d.Headers), ContentType: d.ContentType, DeliveryMode: d.DeliveryMode,
			CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo, MessageId: d.MessageId, Timestamp: d.Timestamp,
			Type: d.Type, UserId: d.UserId, AppId: d.AppId, Body: d.Body,
		}}
	tp.mu.Lock()
	tp.msgs = append(tp.msgs, m)
	tp.mu.Unlock()
}

// find returns the messages of method (and, if set, of one of ids), oldest
// first.
func (tp *tap) find(method string, ids ...string) []tapMsg {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var out []tapMsg
	for _, m := range tp.msgs {
		if m.method != method {
			continue
		}
		if len(ids) > 0 && !contains(ids, m.transferID) {
			continue
		}
		out = append(out, m)
	}
	return out
}

// await waits up to d for a message of method about one of ids.
func (tp *tap) await(method string, d time.Duration, ids ...string) (tapMsg, bool) {
	deadline := time.Now().Add(d)
	for {
		if ms := tp.find(method, ids...); len(ms) > 0 {
			return ms[0], true
		}
		if time.Now().After(deadline) {
			return tapMsg{}, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// publish sends p to Ferry's exchange with routing key key, as the user of
// uri, and waits for the broker's confirm. The suite's mark is added to
// the headers; user_id is replaced by asUser ("" for none).
func publish(uri, key string, p amqp091.Publishing, asUser string) error {
	var err error
	// The broker fault drops every connection of the vhost, this one's too.
	for range 5 {
		if err = publishOnce(uri, key, p, asUser); err == nil {
			return nil
		}
		time.Sleep(300 * time.Millisecond)
	}
	return err
}

func publishOnce(uri, key string, p amqp091.Publishing, asUser string) error {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	p.Headers = maps.Clone(p.Headers)
	if p.Headers == nil {
		p.Headers = amqp091.Table{}
	}
	p.Headers[headerReplay] = true
	p.UserId = asUser
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "ferry", key, false, false, p)
	if err != nil {
		return err
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("publish to %s: nacked", key)
	}
	return nil
}

// envelope is a message as ferry-api or an agent would write it, without
// a signature: what an outsider can make.
func envelope(method, requestID string, body any) (amqp091.Publishing, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return amqp091.Publishing{}, err
	}
	data, err := rpc.Envelope{Version: rpc.Version, Method: method, RequestID: requestID, Body: raw}.Marshal()
	if err != nil {
		return amqp091.Publishing{}, err
	}
	return amqp091.Publishing{ContentType: "application/json", DeliveryMode: amqp091.Persistent,
		MessageId: requestID, Timestamp: time.Now(), Type: method, Body: data}, nil
}

// amqpURI is the first broker URI of a transport URL (rabbit://…).
func amqpURI(transportURL string) (string, error) {
	uris, err := amqp.ParseTransportURL(transportURL)
	if err != nil {
		return "", err
	}
	return uris[0], nil
}

// confValue is an option's value in an INI file (its first occurrence).
func confValue(path, key string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s: no %s", path, key)
}

// pidOf reads a pid file.
func pidOf(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// stackUp runs devstack/stack.sh up for Ferry's daemons only: whatever is
// down (a killed agent) is started again.
func stackUp() (time.Duration, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return 0, err
	}
	start := time.Now()
	cmd := exec.Command(filepath.Join(root, "devstack/stack.sh"), "up")
	cmd.Env = append(os.Environ(), "FERRY_STACK_COMPONENTS=ferry")
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("stack.sh up: %w\n%s", err, out)
	}
	return time.Since(start), nil
}

// killAgent sends sig to the stack's agent of region (its pid file) and
// waits until it is gone.
func killAgent(pidDir, region string, sig syscall.Signal) error {
	pid, err := pidOf(filepath.Join(pidDir, "ferry-agent-"+region+".pid"))
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	for i := 0; i < 200; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("agent %s (pid %d) still alive after signal %v", region, pid, sig)
}

// exportSHA is `rbd export spec - | sha256sum`, safe to call from any
// goroutine.
func exportSHA(conf, spec string) (string, error) {
	cmd := exec.Command("rbd", "-c", conf, "--no-progress", "export", spec, "-")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, out); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("rbd export %s: %w: %s", spec, err, stderr.String())
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ferrySnaps lists an image's ferry-* snapshots ("" and an error when
// the image does not exist).
func ferrySnaps(conf, spec string) ([]string, error) {
	out, err := exec.Command("rbd", "-c", conf, "snap", "ls", "--format", "json", spec).Output()
	if err != nil {
		return nil, fmt.Errorf("rbd snap ls %s: %w", spec, err)
	}
	var snaps []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(out, &snaps); err != nil {
		return nil, err
	}
	var names []string
	for _, s := range snaps {
		if strings.HasPrefix(s.Name, "ferry-") {
			names = append(names, s.Name)
		}
	}
	return names, nil
}

// imageExists: `rbd info` finds it.
func imageExists(conf, spec string) bool {
	return exec.Command("rbd", "-c", conf, "info", spec).Run() == nil
}

// removeImage purges and removes an image, retrying while a watcher (a
// session closing) holds it.
func removeImage(conf, spec string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		if !imageExists(conf, spec) {
			return nil
		}
		exec.Command("rbd", "-c", conf, "snap", "purge", spec).Run()
		out, err := exec.Command("rbd", "-c", conf, "rm", "--no-progress", spec).CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rbd rm %s: %w: %s", spec, err, out)
		}
		time.Sleep(time.Second)
	}
}

// get is a goroutine-safe GET of the API.
func (c *client) get(path string) (map[string]any, error) {
	req, err := http.NewRequest("GET", c.url+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Auth-Token", c.token)
	req.Header.Set("OpenStack-API-Version", apiVersion)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return m, fmt.Errorf("GET %s: %d %v", path, resp.StatusCode, m)
	}
	return m, nil
}
