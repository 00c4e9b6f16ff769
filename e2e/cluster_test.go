package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
)

// Cluster is the multi-node lab (lab.sh up-cluster): a router running
// BIRD with ECMP over n1..nN, each node running its own BIRD and its own
// `sluice agent` (config from scripts/cluster_lib.sh).
type Cluster struct {
	*Lab
	Nodes []*Node
}

// Node is one sluice node of a cluster.
type Node struct {
	c       *Cluster
	I       int
	Host    string // n1, n2, ...
	Config  string
	Socket  string
	PinPath string
	FrontIP string // its address towards the router: the next hop of the VIP route
	bird    string // its BIRD config
	proc    *Proc
	starts  int
}

// newCluster builds a cluster of n nodes, starts the backends (with
// `sluice decap` on them for mode dsr), and on every node BIRD and the
// agent with service web-l4 in mode; it returns once the router has a
// next hop per node for the VIP.
func newCluster(t *testing.T, n int, mode string) *Cluster {
	t.Helper()
	return newClusterStarted(t, n, n, mode)
}

// newClusterStarted is newCluster with only the first `started` nodes
// running (the others are set up: Node.Join starts them).
func newClusterStarted(t *testing.T, n, started int, mode string) *Cluster {
	t.Helper()
	c := &Cluster{Lab: newLabWith(t, "up-cluster", strconv.Itoa(n))}
	c.StartBackends()
	if mode == "dsr" {
		for i := 1; i <= 3; i++ {
			be := fmt.Sprintf("be%d", i)
			pin := fmt.Sprintf("/sys/fs/bpf/sluice-%s-%s-decap", c.ID, be)
			c.MustRun(be, 30*time.Second, env.sluice, "decap", "attach", "--interface", "eth0", "--vip", vip,
				"--xdp-mode", "native", "--pin-path", pin)
			t.Cleanup(func() {
				if out, err := c.Run(be, 30*time.Second, env.sluice, "decap", "detach", "--pin-path", pin); err != nil {
					t.Errorf("decap detach on %s: %v\n%s", be, err, out)
				}
			})
		}
	}
	for i := 1; i <= n; i++ {
		nd := &Node{c: c, I: i, Host: fmt.Sprintf("n%d", i), Config: filepath.Join(c.dir, fmt.Sprintf("n%d.yaml", i)),
			FrontIP: fmt.Sprintf("198.18.%d.2", 4+i)}
		out, err := runCmd(10*time.Second, "bash", "-c", `set -e; lab_dir=$1; id=$2; source "$3"; node_config "$4" "$5" "$6"`,
			"_", filepath.Join(env.repoRoot, ".lab"), c.ID, filepath.Join(env.repoRoot, "scripts", "cluster_lib.sh"), nd.Config, strconv.Itoa(i), mode)
		if err != nil {
			t.Fatalf("node_config n%d: %v\n%s", i, err, out)
		}
		cfg, err := config.Load(nd.Config)
		if err != nil {
			t.Fatalf("node n%d config: %v", i, err)
		}
		nd.Socket, nd.PinPath = cfg.Admin.Socket, cfg.Datapath.PinPath
		bird := filepath.Join(c.dir, fmt.Sprintf("bird-n%d.conf", i))
		out, err = runCmd(10*time.Second, env.sluice, "node", "bird-config", "-c", nd.Config)
		if err != nil {
			t.Fatalf("bird-config n%d: %v\n%s", i, err, out)
		}
		if err := os.WriteFile(bird, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		nd.bird = bird
		t.Cleanup(func() {
			nd.Kill()
			// teardown -c also withdraws the node's VIP routes.
			if out, err := c.Run(nd.Host, 30*time.Second, env.sluice, "teardown", "-c", nd.Config); err != nil {
				t.Errorf("sluice teardown on %s: %v\n%s", nd.Host, err, out)
			}
		})
		c.Nodes = append(c.Nodes, nd)
		if i <= started {
			nd.Join()
		}
	}
	c.WaitNextHops(t, 30*time.Second, c.frontIPs(c.notStarted(started)...)...)
	return c
}

func (c *Cluster) notStarted(started int) []int {
	var out []int
	for i := started + 1; i <= len(c.Nodes); i++ {
		out = append(out, i)
	}
	return out
}

// Join starts the node's BIRD and agent.
func (nd *Node) Join() {
	t := nd.c.t
	t.Helper()
	lab := filepath.Join(env.repoRoot, "scripts", "lab.sh")
	if out, err := runCmd(10*time.Second, lab, "bird", nd.c.ID, nd.Host, nd.bird); err != nil {
		t.Fatalf("lab.sh bird %s: %v\n%s", nd.Host, err, out)
	}
	nd.Start()
}

func (c *Cluster) frontIPs(except ...int) []string {
	var out []string
	for _, nd := range c.Nodes {
		if !slices.Contains(except, nd.I) {
			out = append(out, nd.FrontIP)
		}
	}
	return out
}

// NextHops are the router's next hops for the VIP, sorted (none: no route).
func (c *Cluster) NextHops() ([]string, error) {
	return c.routeHops("ip", "-4", "route", "show", vip+"/32")
}

// ReturnHops are the router's next hops for nat answers (a backend's
// address to the clients: table 4154, kept by BIRD over the nodes BFD sees
// alive), sorted.
func (c *Cluster) ReturnHops() ([]string, error) {
	return c.routeHops("ip", "-4", "route", "show", "table", "4154", "198.18.0.0/24")
}

// routeHops runs an `ip route show` in the router and returns the next
// hops it lists, sorted.
func (c *Cluster) routeHops(cmd ...string) ([]string, error) {
	out, err := c.Run("router", 5*time.Second, cmd...)
	if err != nil {
		return nil, err
	}
	var hops []string
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			hops = append(hops, f[i+1])
		}
	}
	slices.Sort(hops)
	return hops, nil
}

// WaitNextHops waits until the router's next hops for the VIP are want
// and returns how long that took.
func (c *Cluster) WaitNextHops(t *testing.T, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	return c.waitHops(t, timeout, "next hops for "+vip, c.NextHops, want)
}

// WaitReturnHops waits until the router's next hops for nat answers are
// want and returns how long that took.
func (c *Cluster) WaitReturnHops(t *testing.T, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	return c.waitHops(t, timeout, "next hops for nat answers", c.ReturnHops, want)
}

func (c *Cluster) waitHops(t *testing.T, timeout time.Duration, what string, hops func() ([]string, error), want []string) time.Duration {
	t.Helper()
	want = slices.Clone(want)
	slices.Sort(want)
	start := time.Now()
	var last []string
	for {
		got, err := hops()
		if err == nil && slices.Equal(got, want) {
			return time.Since(start)
		}
		last = got
		if time.Since(start) > timeout {
			birdc, _ := runCmd(5*time.Second, "birdc", "-s", c.Env["ROUTER_BIRD_CTL"], "show", "protocols", "all")
			t.Fatalf("router %s: %v after %s, want %v (err %v)\n%s", what, last, timeout, want, err, birdc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Start (re)starts the node's agent and waits until it answers.
func (nd *Node) Start() {
	t := nd.c.t
	t.Helper()
	nd.starts++
	n := nd.starts
	proc := nd.c.Start(fmt.Sprintf("agent-%s-%d", nd.Host, n), nd.Host, env.sluice, "agent", "-c", nd.Config)
	nd.proc = proc
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (%s, start %d):\n%s", nd.Host, n, proc.Log())
		}
	})
	waitFor(t, 15*time.Second, "agent on "+nd.Host, func() error {
		if !proc.Running() {
			t.Fatalf("agent on %s exited (%v):\n%s", nd.Host, proc.Wait(time.Second), proc.Log())
		}
		_, err := nd.Status()
		return err
	})
}

// Kill stops the node's agent with SIGKILL.
func (nd *Node) Kill() {
	if nd.proc != nil && nd.proc.Running() {
		_ = nd.proc.Signal(syscall.SIGKILL)
		_ = nd.proc.Wait(5 * time.Second)
	}
}

// CLI runs `sluice ARGS --socket S`.
func (nd *Node) CLI(args ...string) (string, error) {
	argv := append([]string{args[0], "--socket", nd.Socket}, args[1:]...)
	out, err := runCmd(time.Minute, env.sluice, argv...)
	if err != nil {
		return out, fmt.Errorf("sluice %s on %s: %w: %s", strings.Join(argv, " "), nd.Host, err, strings.TrimSpace(out))
	}
	return out, nil
}

// Status is the node's `sluice status --json`.
func (nd *Node) Status() (admin.Status, error) {
	var st admin.Status
	out, err := nd.CLI("status", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("decode status of %s: %w", nd.Host, err)
	}
	return st, nil
}

// Flows is the number of live flows of web-l4 on the node.
func (nd *Node) Flows(t *testing.T) int {
	t.Helper()
	st, err := nd.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		if s.Name == "web-l4" {
			return s.ActiveFlows
		}
	}
	return 0
}

// VIPReason is why the node announces the VIP or not.
func (nd *Node) VIPReason() (string, error) {
	st, err := nd.Status()
	if err != nil {
		return "", err
	}
	if st.Node == nil {
		return "", fmt.Errorf("%s: no node in status", nd.Host)
	}
	for _, v := range st.Node.VIPs {
		if v.Address == vip {
			return v.Reason, nil
		}
	}
	return "", fmt.Errorf("%s: %s not in status", nd.Host, vip)
}

// Issue 13: long-lived connections spread over the nodes; kill -9 of one
// node's agent changes no route, moves no flow and fails no request, and
// its restart announces and withdraws nothing.
func TestClusterSpreadAndAgentKill(t *testing.T) {
	c := newCluster(t, 3, "snat")
	long := c.StartLoad("long", nil, "--mode", "keepalive", "--conns", "24", "--interval", "50ms",
		"--count", "1000000", "--duration", "60s", "--timeout", "2s")
	short := c.StartLoad("short", nil, "--mode", "newconn", "--conns", "2", "--interval", "50ms",
		"--count", "1000000", "--duration", "60s", "--timeout", "3s")
	var flows []int
	waitFor(t, 10*time.Second, "24 connections established", func() error {
		flows = flows[:0]
		total := 0
		for _, nd := range c.Nodes {
			n := nd.Flows(t)
			flows = append(flows, n)
			total += n
		}
		if total < 24 {
			return fmt.Errorf("flows per node %v", flows)
		}
		return nil
	})
	busy := 0
	for _, n := range flows {
		if n > 0 {
			busy++
		}
	}
	if busy < 2 {
		t.Fatalf("flows per node %v: the router did not spread them", flows)
	}
	t.Logf("flows per node: %v", flows)
	// Every agent reads its BIRD's session (status, sluice_bgp_session_up).
	for _, nd := range c.Nodes {
		waitFor(t, 5*time.Second, nd.Host+"'s BGP session in status", func() error {
			st, err := nd.Status()
			if err != nil {
				return err
			}
			if st.Node == nil || len(st.Node.Sessions) != 1 || !st.Node.Sessions[0].Up {
				return fmt.Errorf("node %+v", st.Node)
			}
			return nil
		})
	}
	victim := c.Nodes[slices.Index(flows, slices.Max(flows))]
	victim.Kill()
	// A few seconds: BIRD keeps the session (it has nothing to do with
	// the agent), the route stays in the kernel table, nothing moves.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		hops, err := c.NextHops()
		if err != nil || len(hops) != 3 {
			t.Fatalf("after kill -9 of %s's agent the router has %v (%v)", victim.Host, hops, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	victim.Start()
	time.Sleep(2 * time.Second)
	if log := victim.proc.Log(); strings.Contains(log, "vip withdrawn") || strings.Contains(log, "vip announced") {
		t.Errorf("the restarted agent changed a route:\n%s", log)
	}
	long.Stop(10 * time.Second)
	short.Stop(10 * time.Second)
	lr, sr := parseReport(t, long.Output()), parseReport(t, short.Output())
	t.Logf("long: %d requests, %d dials, failures %v; short: %d requests, failures %v", lr.Requests, lr.Dials, lr.Errors, sr.Requests, sr.Errors)
	if lr.Failures != 0 || lr.Dials != 24 || sr.Failures != 0 || sr.OK == 0 {
		t.Fatalf("kill -9 of an agent: long-lived %d failures, %d dials for 24 connections (%v %v); new connections %d failures (%v)",
			lr.Failures, lr.Dials, lr.Errors, lr.Samples, sr.Failures, sr.Samples)
	}
}

// Issue 13: a service with no usable backend is withdrawn on every node,
// and announced again when a backend comes back.
func TestClusterNoBackendWithdrawn(t *testing.T) {
	c := newCluster(t, 2, "snat")
	var stopped []*Proc
	c.mu.Lock()
	for _, p := range c.procs {
		if strings.HasPrefix(p.Name, "be") {
			stopped = append(stopped, p)
		}
	}
	c.mu.Unlock()
	for _, p := range stopped {
		p.Stop(3 * time.Second)
	}
	took := c.WaitNextHops(t, 10*time.Second)
	t.Logf("withdrawn on every node %s after the backends stopped", took.Round(time.Millisecond))
	for _, nd := range c.Nodes {
		if r, err := nd.VIPReason(); err != nil || r != "no usable backend" {
			t.Errorf("%s: reason %q (%v)", nd.Host, r, err)
		}
	}
	c.StartBackends()
	c.WaitNextHops(t, 10*time.Second, c.frontIPs()...)
	if r := c.Load("--mode", "newconn", "--count", "20", "--duration", "10s"); r.Failures != 0 {
		t.Fatalf("after the backends came back: %d failures %v", r.Failures, r.Samples)
	}

	// A node whose BIRD hangs (no link goes down, no session closes) is
	// taken out by BFD: 200 ms x 5 in the lab.
	b, err := os.ReadFile(filepath.Join(env.repoRoot, ".lab", c.ID, "bird-n2.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	took = c.WaitNextHops(t, 5*time.Second, c.frontIPs(2)...)
	t.Logf("n2's BIRD hung: withdrawn by BFD after %s", took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Errorf("BFD took %s to take the hung node out (200 ms x 5 configured)", took)
	}
}

// load is a bounded load from the client: long-lived connections
// (keepalive, requests every 20 ms) and new connections.
type load struct{ long, short *Proc }

func (c *Cluster) startLoad(conns int) load {
	return load{
		long: c.StartLoad("long", nil, "--mode", "keepalive", "--conns", strconv.Itoa(conns), "--interval", "20ms",
			"--count", "1000000", "--duration", "60s", "--timeout", "2s"),
		short: c.StartLoad("short", nil, "--mode", "newconn", "--conns", "2", "--interval", "20ms",
			"--count", "1000000", "--duration", "60s", "--timeout", "3s"),
	}
}

// stop stops the loads and fails the test on any failed request, or on a
// long-lived connection dialled again (a reset one).
func (l load) stop(t *testing.T, conns int, what string) {
	t.Helper()
	l.long.Stop(10 * time.Second)
	l.short.Stop(10 * time.Second)
	lr, sr := parseReport(t, l.long.Output()), parseReport(t, l.short.Output())
	t.Logf("%s: long-lived: %d requests on %d dials; new connections: %d requests; failures %d/%d",
		what, lr.Requests, lr.Dials, sr.Requests, lr.Failures, sr.Failures)
	if lr.Failures != 0 || lr.Dials != conns || sr.Failures != 0 || sr.OK == 0 || lr.OK == 0 {
		t.Fatalf("%s: long-lived %d failures, %d dials for %d connections (%v %v); new connections %d failures (%v %v)",
			what, lr.Failures, lr.Dials, conns, lr.Errors, lr.Samples, sr.Failures, sr.Errors, sr.Samples)
	}
}

// waitFlows waits until the nodes hold at least n flows together and
// returns each node's count.
func (c *Cluster) waitFlows(t *testing.T, n int) []int {
	t.Helper()
	var flows []int
	waitFor(t, 10*time.Second, fmt.Sprintf("%d flows", n), func() error {
		flows = flows[:0]
		total := 0
		for _, nd := range c.Nodes {
			if nd.proc == nil {
				flows = append(flows, 0)
				continue
			}
			f := nd.Flows(t)
			flows = append(flows, f)
			total += f
		}
		if total < n {
			return fmt.Errorf("flows per node %v", flows)
		}
		return nil
	})
	return flows
}

// Issue 13, mode dsr: one node dies (its link to the router goes down):
// the router drops it at once, and every connection it carried goes on
// through another node to the same backend — no reset, no failed request,
// no new dial — while new connections keep succeeding.
func TestClusterDSRNodeDies(t *testing.T) {
	c := newCluster(t, 3, "dsr")
	const conns = 24
	l := c.startLoad(conns)
	flows := c.waitFlows(t, conns)
	victim := c.Nodes[slices.Index(flows, slices.Max(flows))]
	t.Logf("flows per node %v; %s dies", flows, victim.Host)
	time.Sleep(500 * time.Millisecond)
	victim.c.MustRun(victim.Host, 5*time.Second, "ip", "link", "set", "eth0", "down")
	took := c.WaitNextHops(t, 3*time.Second, c.frontIPs(victim.I)...)
	t.Logf("the router dropped %s after %s", victim.Host, took.Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the moved flows keep going
	l.stop(t, conns, victim.Host+" died")
}

// Issue 13, mode nat: one node dies (its link to the router goes down).
// The router routes the backends' answers over the live nodes (table 4154),
// not back to the node that forwarded a flow, so answers reach nodes
// without the flow's entry, which translate them from the backend's
// endpoint alone; the dead node's connections go on through the others to
// the same backend — no reset, no failed request, no new dial.
func TestClusterNATNodeDies(t *testing.T) {
	c := newCluster(t, 3, "nat")
	c.WaitReturnHops(t, 15*time.Second, c.frontIPs()...)
	const conns = 24
	l := c.startLoad(conns)
	flows := c.waitFlows(t, conns)
	victim := c.Nodes[slices.Index(flows, slices.Max(flows))]
	c.logSpread(t, 2*time.Second)
	t.Logf("flows per node %v; %s dies", flows, victim.Host)
	victim.c.MustRun(victim.Host, 5*time.Second, "ip", "link", "set", "eth0", "down")
	took := c.WaitNextHops(t, 3*time.Second, c.frontIPs(victim.I)...)
	back := c.WaitReturnHops(t, 3*time.Second, c.frontIPs(victim.I)...)
	t.Logf("the router dropped %s after %s, from the answers' route after %s", victim.Host,
		took.Round(time.Millisecond), back.Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the moved flows keep going
	l.stop(t, conns, victim.Host+" died")
	var without float64
	for _, nd := range c.Nodes {
		if nd != victim {
			m, _ := c.scrapeHost(nd.Host)
			without += m["sluice_replies_without_flow_total"]
		}
	}
	if without == 0 {
		t.Fatal("no node translated an answer without its flow entry: the answers did not move between nodes")
	}
	t.Logf("answers translated without their flow entry on the live nodes: %v", without)
}

// logSpread measures, over d, how the router spreads the service's
// packets (both directions: client packets by the VIP routes, nat answers
// by table 4154) over the nodes, logs each node's share and the answers
// it translated without a flow entry (docs/benchmarks.md), and fails if a
// node carried none.
func (c *Cluster) logSpread(t *testing.T, d time.Duration) {
	t.Helper()
	const pkts, without = `sluice_service_packets_total{service="web-l4"}`, "sluice_replies_without_flow_total"
	before := make([]map[string]float64, len(c.Nodes))
	for i, nd := range c.Nodes {
		before[i], _ = c.scrapeHost(nd.Host)
	}
	time.Sleep(d)
	var total float64
	got := make([][2]float64, len(c.Nodes))
	for i, nd := range c.Nodes {
		m, _ := c.scrapeHost(nd.Host)
		got[i] = [2]float64{m[pkts] - before[i][pkts], m[without] - before[i][without]}
		total += got[i][0]
	}
	for i, nd := range c.Nodes {
		t.Logf("spread over %s: %s carried %.0f packets/s (%.0f%%), %.0f answers/s translated without a flow entry",
			d, nd.Host, got[i][0]/d.Seconds(), 100*got[i][0]/total, got[i][1]/d.Seconds())
		if got[i][0] == 0 {
			t.Errorf("%s carried no packet", nd.Host)
		}
	}
}

// Issue 13, mode dsr: a node drain withdraws first, then waits until the
// node sees no packet, then reports done; no request fails.
func TestClusterDSRNodeDrain(t *testing.T) {
	c := newCluster(t, 2, "dsr")
	const conns = 16
	l := c.startLoad(conns)
	flows := c.waitFlows(t, conns)
	// The node with the most flows is drained (the router's hash may put
	// few or none of 16 on one of two nodes).
	nd := c.Nodes[slices.Index(flows, slices.Max(flows))]
	t.Logf("flows per node %v; %s drains", flows, nd.Host)
	start := time.Now()
	out, err := nd.CLI("node", "drain", "--quiet", "1s", "--timeout", "20s")
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if !strings.Contains(out, "withdrawn: "+vip) || !strings.Contains(out, "drained (quiet)") ||
		strings.Index(out, "withdrawn") > strings.Index(out, "drained") {
		t.Fatalf("node drain said:\n%s", out)
	}
	if hops, err := c.NextHops(); err != nil || !slices.Equal(hops, c.frontIPs(nd.I)) {
		t.Fatalf("after the drain the router has %v (%v)", hops, err)
	}
	if took < time.Second {
		t.Fatalf("drained after %s, before the 1s quiet period", took)
	}
	if n := nd.Flows(t); n == 0 {
		t.Logf("%s's flows expired already", nd.Host)
	}
	t.Logf("drained in %s:\n%s", took.Round(time.Millisecond), out)
	l.stop(t, conns, nd.Host+" drained")
	if _, err := nd.CLI("node", "undrain"); err != nil {
		t.Fatal(err)
	}
	c.WaitNextHops(t, 10*time.Second, c.frontIPs()...)
}

// Issue 13, mode dsr: a node joins; the router's ECMP rehash moves some
// flows to it, none breaks.
func TestClusterDSRNodeJoins(t *testing.T) {
	c := newClusterStarted(t, 3, 2, "dsr")
	const conns = 24
	l := c.startLoad(conns)
	c.waitFlows(t, conns)
	c.Nodes[2].Join()
	c.WaitNextHops(t, 15*time.Second, c.frontIPs()...)
	time.Sleep(2 * time.Second)
	if n := c.Nodes[2].Flows(t); n == 0 {
		t.Logf("n3 got none of the %d flows (the rehash moved none)", conns)
	}
	l.stop(t, conns, "n3 joined")
}

// A dsr backend's decap program detached by another tool (bpftool link
// detach, as an interface made again would lose it): `sluice decap attach
// --keep` attaches it again within a check or two, and new connections
// through the VIP reach that backend again, none failing. Without the
// keeper the backend drops every packet the node sends it.
func TestClusterDSRDecapKept(t *testing.T) {
	c := newCluster(t, 1, "dsr")
	pin := fmt.Sprintf("/sys/fs/bpf/sluice-%s-be1-decap", c.ID)
	keeper := c.Start("decap-keep", "be1", env.sluice, "decap", "attach", "--keep", "--interface", "eth0", "--vip", vip,
		"--xdp-mode", "native", "--pin-path", pin)
	waitFor(t, 10*time.Second, "the decap keeper running", func() error {
		if !strings.Contains(keeper.Log(), "keeping the decap program attached") {
			return errors.New("not yet")
		}
		return nil
	})
	load := func(what string) {
		t.Helper()
		r := c.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "20s", "--timeout", "2s")
		if r.Failures != 0 || r.ByBackend["be1"] == 0 {
			t.Fatalf("%s: %d of %d requests failed, be1 answered %d (%v); keeper's log:\n%s",
				what, r.Failures, r.Requests, r.ByBackend["be1"], r.Errors, keeper.Log())
		}
	}
	load("before")
	if out, err := bpftool("link", "detach", "pinned", filepath.Join(pin, "link_eth0")); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	waitFor(t, 5*time.Second, "the decap program attached again", func() error {
		if !strings.Contains(keeper.Log(), `msg="decap program lost on an interface, attached again" interface=eth0 lost="the link was detached`) {
			return errors.New("not yet")
		}
		return nil
	})
	load("after the detach")
}
