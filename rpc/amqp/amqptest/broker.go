//go:build functional || e2e

// Package amqptest runs a private RabbitMQ node for tests that stop and
// restart the broker; the machine's shared broker is never touched.
package amqptest

// See notes/rabbitmq.md: the node
// runs /usr/lib/rabbitmq/bin/rabbitmq-server (not Debian's wrapper) in its own
// session with every path in a test directory, next to its own epmd.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

const rabbitmqServer = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// Broker is a private RabbitMQ node: Start, Stop and Start again keep
// its data (same node name and mnesia directory).
type Broker struct {
	t    testing.TB
	dir  string
	node string
	Port int
	env  []string
	URL  string

	epmd   *exec.Cmd
	server *exec.Cmd
	exited chan struct{} // closed when server exits
}

// StartBroker starts a private node and stops it, and its epmd, when the
// test ends.
func StartBroker(t testing.TB) *Broker {
	t.Helper()
	if _, err := os.Stat(rabbitmqServer); err != nil {
		t.Fatalf("rabbitmq-server not installed (apt-get install rabbitmq-server): %v", err)
	}
	dir := t.TempDir()
	ports := FreePorts(t, 3)
	b := &Broker{
		t:    t,
		dir:  dir,
		node: fmt.Sprintf("ferry-test-%s@localhost", randomID()),
		Port: ports[0],
	}
	b.URL = fmt.Sprintf("rabbit://guest:guest@127.0.0.1:%d/", b.Port)
	files := map[string]string{
		"rabbitmq.conf":     "disk_free_limit.absolute = 1MB\nlog.console = false\nlog.file.level = info\n",
		"enabled_plugins":   "[].\n",
		"rabbitmq-env.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RABBITMQ_") && !strings.HasPrefix(kv, "ERL_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	b.env = append(env,
		"HOME="+dir, // the Erlang cookie
		"RABBITMQ_NODENAME="+b.node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", ports[0]),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", ports[1]),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbit.pid"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		fmt.Sprintf("ERL_EPMD_PORT=%d", ports[2]),
		"ERL_EPMD_ADDRESS=127.0.0.1",
	)

	b.epmd = exec.Command("epmd", "-port", fmt.Sprint(ports[2]), "-address", "127.0.0.1")
	b.epmd.Env = b.env
	b.epmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := b.epmd.Start(); err != nil {
		t.Fatalf("epmd: %v", err)
	}
	t.Cleanup(b.kill)
	waitPort(t, ports[2], 10*time.Second)
	b.Start()
	return b
}

// Start starts the node and waits until it accepts AMQP connections.
func (b *Broker) Start() {
	b.t.Helper()
	start := time.Now()
	log, err := os.OpenFile(filepath.Join(b.dir, "server.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.t.Fatal(err)
	}
	defer log.Close()
	b.server = exec.Command(rabbitmqServer)
	b.server.Env = b.env
	b.server.Dir = b.dir
	b.server.Stdout, b.server.Stderr = log, log
	b.server.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // its own process group
	if err := b.server.Start(); err != nil {
		b.t.Fatalf("rabbitmq-server: %v", err)
	}
	exited := make(chan struct{})
	b.exited = exited
	go func(cmd *exec.Cmd) {
		_ = cmd.Wait()
		close(exited)
	}(b.server)
	deadline := time.Now().Add(90 * time.Second)
	for {
		conn, err := amqp091.DialConfig(fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", b.Port), amqp091.Config{Dial: amqp091.DefaultDial(2 * time.Second)})
		if err == nil {
			conn.Close()
			break
		}
		select {
		case <-exited:
			b.t.Fatalf("rabbitmq-server exited during start-up; %s", b.logTail())
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("node %s not up after 90 s: %v; %s", b.node, err, b.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.t.Logf("node %s up on port %d in %v", b.node, b.Port, time.Since(start).Round(time.Millisecond))
}

// Stop stops the node gracefully (SIGTERM to rabbitmq-server, which stops
// the Erlang VM) and waits for it to exit; after 60 s it kills it.
func (b *Broker) Stop() {
	b.t.Helper()
	if b.server == nil {
		return
	}
	start := time.Now()
	_ = b.server.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(60 * time.Second):
		b.t.Errorf("node %s ignored SIGTERM for 60 s: killed", b.node)
		_ = syscall.Kill(-b.server.Process.Pid, syscall.SIGKILL)
		<-b.exited
	}
	// The VM's helpers (erl_child_setup, inet_gethost) share the group.
	_ = syscall.Kill(-b.server.Process.Pid, syscall.SIGKILL)
	b.server = nil
	b.t.Logf("node %s stopped in %v", b.node, time.Since(start).Round(time.Millisecond))
}

// kill ends the node and epmd, whatever their state (t.Cleanup).
func (b *Broker) kill() {
	if b.server != nil {
		pid := b.server.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-b.exited:
		case <-time.After(15 * time.Second):
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-b.exited
		b.server = nil
	}
	if b.epmd != nil && b.epmd.Process != nil {
		_ = syscall.Kill(-b.epmd.Process.Pid, syscall.SIGKILL)
		_ = b.epmd.Wait()
	}
}

// logTail is the end of the node's logs, for failures.
func (b *Broker) logTail() string {
	var out []string
	files, _ := filepath.Glob(filepath.Join(b.dir, "log", "*.log"))
	for _, f := range append([]string{filepath.Join(b.dir, "server.out")}, files...) {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		out = append(out, fmt.Sprintf("%s:\n%s", f, strings.Join(lines[max(0, len(lines)-15):], "\n")))
	}
	return strings.Join(out, "\n")
}

// FreePorts returns n distinct loopback ports that were free a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func waitPort(t testing.TB, port int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(errors.Join(fmt.Errorf("port %d not open after %v", port, timeout), err))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
