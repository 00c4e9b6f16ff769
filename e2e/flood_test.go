package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// floodBin is the built e2e/flood (see buildAll).
var floodBin string

// TestSYNFlood (issue 10, item 1): a flood of SYNs from spoofed lab sources
// that alone would fill conntrack many times over, while long-lived
// connections run through the VIP. The long-lived connections keep their
// backends and lose no request, new connections still succeed, no backend
// is ejected (the spoofed handshakes are abandoned by their "clients", not
// refused by the backends), and nothing reaches the client side with a
// backend's address where the VIP belongs.
func TestSYNFlood(t *testing.T) {
	const (
		floodCount    = 800000
		floodRate     = 40000 // SYNs a second: see below
		conntrackMax  = 16384 // 8192 flows (the SYNs alone would fill it 50 times over); half-open table: 8192 slots
		longConns     = 32
		floodDuration = 30 * time.Second // a bound: the flood takes floodCount/floodRate = 20 s
	)
	// The flood is paced. This test is about state: conntrack and the
	// half-open table overrun 50 times while established and new flows
	// keep theirs. Unpaced, the raw socket sends ~200 000 SYNs a second,
	// each costing the lab's 2 CPUs a full round (client stack, XDP,
	// a backend's SYN-ACK, XDP back, client drop); about half of them
	// are dropped on the veths before XDP sees them, and so, at random,
	// are the real clients' packets (a SYN lost twice is a 2 s dial
	// timeout): a capacity ceiling of the lab's machine, not a
	// property of sluice, and the reason this test failed
	// intermittently. At 40 000 a second the lab keeps up (dial p99 a
	// few ms) and every slot of the half-open table is still overwritten
	// ~100 times. The long-lived connections send one request a second:
	// idle for longer than the flood needs to write 16384 new flows
	// (0.4 s), so a data path that let the flood into conntrack's LRU
	// would lose their entries between requests (as before issue 10).
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{Datapath: fmt.Sprintf(", conntrack_max: %d", conntrackMax)})
	// The spoofed sources' SYN-ACKs are routed back to the client side,
	// whose kernel drops them (no such address there).
	lab.MustRun("lb", 5*time.Second, "ip", "route", "add", "198.19.0.0/16", "via", "198.18.0.2")

	// Only what reaches the real client counts: a SYN-ACK to a spoofed
	// source whose flow sluice has entirely forgotten (both entries
	// evicted) cannot be told from a backend's own traffic and passes
	// untouched (see docs/architecture.md).
	watcher := lab.Start("leakwatch", "client", floodBin, "watch", "--iface", "eth0",
		"--net", "198.18.2.0/24", "--port", "80", "--dst", "198.18.0.2", "--duration", "90s")
	t.Cleanup(func() { watcher.Stop(3 * time.Second) })
	waitFor(t, 5*time.Second, "leak watcher", func() error {
		if strings.Contains(string(watcher.Output()), "ready") {
			return nil
		}
		if !watcher.Running() {
			return fmt.Errorf("exited: %s", watcher.Log())
		}
		return fmt.Errorf("not ready")
	})

	events := make(chan string, 1<<16)
	long := lab.StartLoad("long", events, "--url", vipURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(longConns), "--interval", "1s", "--count", "1000000",
		"--duration", "90s", "--timeout", "3s", "--events")
	t.Cleanup(func() { long.Stop(3 * time.Second) })
	for answered := map[int]bool{}; len(answered) < longConns; {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("long-lived connections: %v\n%s", err, long.Log())
		}
		if ev.Event == "error" {
			t.Fatalf("a long-lived connection failed before the flood: %s %s", ev.Kind, ev.Error)
		}
		if ev.Event == "response" {
			answered[ev.Worker] = true
		}
	}

	before, _ := lab.scrape()
	flood := lab.Start("flood", "client", floodBin, "syn", "--to", vip+":80", "--from", "198.19.0.0/16",
		"--count", fmt.Sprint(floodCount), "--duration", floodDuration.String(), "--rate", fmt.Sprint(floodRate))
	t.Cleanup(func() { flood.Stop(3 * time.Second) })
	// New connections while the flood runs (paced: thousands of new
	// connections a second from one client fail in this lab with or
	// without a flood, on client port reuse). 12 s of the flood's 20:
	// hundreds of handshakes, so one lost SYN's retransmission cannot
	// decide the 95 % bar.
	fresh := lab.Load("--url", vipURL, "--mode", "newconn", "--interval", "5ms", "--count", "100000", "--duration", "12s", "--timeout", "2s")
	if err := flood.Wait(floodDuration + 10*time.Second); err != nil {
		t.Fatalf("flood: %v\n%s", err, flood.Log())
	}
	afterFlood := lab.Load("--url", vipURL, "--mode", "newconn", "--interval", "5ms", "--count", "100000", "--duration", "3s", "--timeout", "2s")
	// A backend still working off the flood's backlog may miss one
	// handshake of hundreds: the same bar as during the flood.
	if afterFlood.Requests == 0 || float64(afterFlood.OK) < 0.95*float64(afterFlood.Requests) {
		t.Errorf("new connections after the flood: %d of %d succeeded, want >= 95%%: %v %v",
			afterFlood.OK, afterFlood.Requests, afterFlood.Errors, afterFlood.Samples)
	}
	var sent struct{ Sent, MS int }
	if err := json.Unmarshal(flood.Output(), &sent); err != nil {
		t.Fatalf("flood report %q: %v", flood.Output(), err)
	}
	after, raw := lab.scrape()

	long.Stop(5 * time.Second)
	rep := parseReport(t, long.Output())
	assertNoFailures(t, "long-lived connections through the flood", rep)
	if rep.Dials != longConns {
		t.Errorf("the long-lived load dialled %d connections, want %d: established connections must keep their backend", rep.Dials, longConns)
	}
	rate := 0.0
	if fresh.Requests > 0 {
		rate = float64(fresh.OK) / float64(fresh.Requests)
	}
	if rate < 0.95 {
		t.Errorf("new connections during the flood: %d of %d succeeded (%.0f%%), want >= 95%%: %v %v",
			fresh.OK, fresh.Requests, 100*rate, fresh.Errors, fresh.Samples)
	}

	watcher.Stop(3 * time.Second)
	var w struct{ Leaked, Seen int }
	if err := json.Unmarshal(watcher.Output()[len("ready\n"):], &w); err != nil {
		t.Fatalf("watcher report %q: %v", watcher.Output(), err)
	}
	if w.Leaked != 0 {
		t.Errorf("%d packets reached the client side with a backend's address and port 80 as their source", w.Leaked)
	}
	if d := after[`sluice_backend_transitions_total{to="ejected"}`] - before[`sluice_backend_transitions_total{to="ejected"}`]; d != 0 {
		t.Errorf("%v backends ejected during the flood, want 0", d)
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		if st, err := agent.BackendState(backendAddr[be]); err != nil || st != "active" {
			t.Errorf("%s after the flood: %q (%v), want active", be, st, err)
		}
	}
	// The flood is visible to the operator: it overwrote live half-open
	// slots (8192 of them, 800 000 SYNs).
	overwritten := after["sluice_halfopen_overwritten_total"] - before["sluice_halfopen_overwritten_total"]
	if overwritten == 0 {
		t.Errorf("sluice_halfopen_overwritten_total did not move under a flood of %d SYNs into %d half-open slots", sent.Sent, conntrackMax/2)
	}
	t.Logf("live half-open slots overwritten by the flood: %v", overwritten)
	t.Logf("flood: %d spoofed SYNs in %d ms (conntrack_max %d); long-lived: %d requests, %d failed, %d dials; "+
		"new connections during the flood: %d/%d ok (%.1f%%), latency %v; packets seen on the client side %d, leaked %d; "+
		"flows confirmed %v, reverse entries re-created %v, SYN-ACKs of forgotten flows dropped %v",
		sent.Sent, sent.MS, conntrackMax, rep.Requests, rep.Failures, rep.Dials,
		fresh.OK, fresh.Requests, 100*rate, fresh.LatencyMS, w.Seen, w.Leaked,
		after["sluice_flows_confirmed_total"]-before["sluice_flows_confirmed_total"],
		after["sluice_reverse_entries_recreated_total"]-before["sluice_reverse_entries_recreated_total"],
		after["sluice_synack_no_flow_drops_total"]-before["sluice_synack_no_flow_drops_total"])
	if t.Failed() {
		t.Logf("metrics after the flood:\n%s", raw)
	}
}
