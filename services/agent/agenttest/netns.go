//go:build functional || bench

package agenttest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Net is a private network the test makes and removes: a network namespace
// per agent node and a "wan" namespace that routes between the nodes' data
// addresses. Each node namespace also has a veth to the host, used only to
// reach 127.0.0.1 (the stack's Ceph monitors and OSDs, the broker): its
// rule table sends 127.0.0.1 out through that veth, and route_localnet on
// both ends lets the host answer. So an agent in a node namespace talks to
// Ceph and the broker as before, and to the other agents only through the
// wan namespace, which the test can cut (Cut, Restore) or shape.
//
// Everything lives in the namespaces, so deleting them (t.Cleanup, even
// after a failure) removes every link, address, route and qdisc. The host
// ends of the veths (fn<id>h<i>, 10.251.<id>.0/24) go with them. A test
// binary killed before its cleanup leaves namespaces named ferrynet-<pid>-*;
// the next NewNet removes those whose process is gone.
type Net struct {
	t     testing.TB
	id    int
	Wan   string // the wan namespace
	nodes map[string]*Node
	order []string
}

// Node is one agent's namespace.
type Node struct {
	Name string
	NS   string
	// Addr is the node's data address (on its link to the wan namespace).
	Addr net.IP
	// WanDev is the wan namespace's end of the node's link; Dev is the
	// node's end (named "wan" in the node's namespace).
	WanDev, Dev string
	index       int
	host        string // the host end of the node's host veth
}

const netPrefix = "ferrynet-"

// NewNet makes the namespaces for the named nodes.
func NewNet(t testing.TB, names ...string) *Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("NewNet needs root (network namespaces, veth)")
	}
	if len(names) > 60 {
		t.Fatal("NewNet: too many nodes")
	}
	sweepStale(t)
	n := &Net{t: t, id: os.Getpid() % 250, nodes: map[string]*Node{}}
	n.Wan = fmt.Sprintf("%s%d-wan", netPrefix, os.Getpid())
	t.Cleanup(n.remove)
	n.ip("netns", "add", n.Wan)
	n.in(n.Wan, "ip", "link", "set", "lo", "up")
	n.in(n.Wan, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i, name := range names {
		nd := &Node{Name: name, NS: fmt.Sprintf("%s%d-%s", netPrefix, os.Getpid(), name), index: i,
			Addr:   net.IPv4(10, 252, byte(n.id), byte(4*i+2)).To4(),
			WanDev: fmt.Sprintf("n%d", i), Dev: "wan"}
		n.nodes[name] = nd
		n.order = append(n.order, name)
		n.ip("netns", "add", nd.NS)
		// The host link: 127.0.0.1 only.
		host := fmt.Sprintf("fn%dh%d", os.Getpid()%100000, i)
		nd.host = host
		hostIP := fmt.Sprintf("10.251.%d.%d", n.id, 4*i+1)
		nodeIP := fmt.Sprintf("10.251.%d.%d", n.id, 4*i+2)
		n.ip("link", "add", host, "type", "veth", "peer", "name", "host", "netns", nd.NS)
		n.ip("addr", "add", hostIP+"/30", "dev", host)
		n.ip("link", "set", host, "up")
		run(t, "sysctl", "-qw", "net.ipv4.conf."+host+".route_localnet=1")
		n.in(nd.NS, "ip", "link", "set", "lo", "up")
		n.in(nd.NS, "ip", "addr", "add", nodeIP+"/30", "dev", "host")
		n.in(nd.NS, "ip", "link", "set", "host", "up")
		n.in(nd.NS, "sysctl", "-qw", "net.ipv4.conf.host.route_localnet=1")
		n.in(nd.NS, "ip", "route", "add", "127.0.0.1/32", "via", hostIP, "dev", "host", "src", nodeIP, "table", "100")
		n.in(nd.NS, "ip", "rule", "add", "pref", "10", "to", "127.0.0.1/32", "lookup", "100")
		n.in(nd.NS, "ip", "rule", "add", "pref", "100", "lookup", "local")
		n.in(nd.NS, "ip", "rule", "del", "pref", "0")
		// The wan link: the node's data address.
		n.ip("link", "add", nd.Dev, "netns", nd.NS, "type", "veth", "peer", "name", nd.WanDev, "netns", n.Wan)
		wanIP := fmt.Sprintf("10.252.%d.%d", n.id, 4*i+1)
		n.in(nd.NS, "ip", "addr", "add", nd.Addr.String()+"/30", "dev", nd.Dev)
		n.in(nd.NS, "ip", "link", "set", nd.Dev, "up")
		n.in(nd.NS, "ip", "route", "add", fmt.Sprintf("10.252.%d.0/24", n.id), "via", wanIP, "dev", nd.Dev)
		n.in(n.Wan, "ip", "addr", "add", wanIP+"/30", "dev", nd.WanDev)
		n.in(n.Wan, "ip", "link", "set", nd.WanDev, "up")
	}
	return n
}

// Node returns the named node.
func (n *Net) Node(name string) *Node {
	nd := n.nodes[name]
	if nd == nil {
		n.t.Fatalf("no node %q", name)
	}
	return nd
}

// Command is exec.Command run in node's namespace.
func (n *Net) Command(node, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Node(node).NS, name}, args...)...)
}

// Cut makes the wan namespace drop, silently, every packet to any node's
// data address (a blackhole route per address: no ICMP, no reset), as a
// link that goes dark does.
func (n *Net) Cut() {
	n.t.Helper()
	for _, name := range n.order {
		n.in(n.Wan, "ip", "route", "add", "blackhole", n.nodes[name].Addr.String()+"/32")
	}
}

// Restore removes Cut's routes.
func (n *Net) Restore() {
	n.t.Helper()
	for _, name := range n.order {
		n.in(n.Wan, "ip", "route", "del", "blackhole", n.nodes[name].Addr.String()+"/32")
	}
}

// RxBytes is the bytes node's data interface received.
func (n *Net) RxBytes(node string) uint64 {
	n.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.Node(node).NS, "cat", "/sys/class/net/"+n.Node(node).Dev+"/statistics/rx_bytes").Output()
	if err != nil {
		n.t.Fatalf("rx_bytes of %s: %v", node, err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		n.t.Fatal(err)
	}
	return v
}

// InWan runs a command in the wan namespace (tc, ip …).
func (n *Net) InWan(name string, args ...string) { n.t.Helper(); n.in(n.Wan, name, args...) }

// In runs a command in node's namespace.
func (n *Net) In(node, name string, args ...string) {
	n.t.Helper()
	n.in(n.Node(node).NS, name, args...)
}

func (n *Net) in(ns, name string, args ...string) {
	n.t.Helper()
	run(n.t, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func (n *Net) ip(args ...string) { n.t.Helper(); run(n.t, "ip", args...) }

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// remove deletes the namespaces (their veths, and the veths' host ends,
// go with them).
func (n *Net) remove() {
	for _, name := range n.order {
		// A socket still closing (its FIN lost with the wan namespace)
		// keeps its namespace, and so the host veth, alive until it gives
		// up: destroy the sockets, and the host end at once.
		exec.Command("ip", "netns", "exec", n.nodes[name].NS, "ss", "-K").Run()
		exec.Command("ip", "link", "del", n.nodes[name].host).Run()
		exec.Command("ip", "netns", "del", n.nodes[name].NS).Run()
	}
	exec.Command("ip", "netns", "del", n.Wan).Run()
}

// sweepStale removes the namespaces of test processes that are gone.
func sweepStale(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], netPrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], netPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			exec.Command("ip", "netns", "del", f[0]).Run()
		}
	}
}
