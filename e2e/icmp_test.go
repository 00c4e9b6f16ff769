package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// icmperrBin is the built e2e/icmperr (see buildAll).
var icmperrBin string

// TestICMPFragNeeded: a router between sluice and the client that cannot
// forward a large reply sends "fragmentation needed" to the reply's source,
// the VIP, which no host owns. sluice must translate it (outer destination
// and quoted packet) and forward it to the backend that sent the reply, whose
// kernel then finds its UDP socket from the quote and learns the path MTU to
// the client. Untranslated, the error dies in the lb and no backend learns.
func TestICMPFragNeeded(t *testing.T) {
	parallel(t)
	const (
		client     = "198.18.0.2"
		clientPort = 41000
		mtu        = 1200
	)
	lab := newLab(t)
	lab.StartBackends()
	lab.StartAgent(agentConfig{UDP: true})

	// One UDP flow from a fixed source port; the reply names its backend.
	out := lab.MustRun("client", 10*time.Second, icmperrBin, "flow",
		"--src", fmt.Sprintf("%s:%d", client, clientPort), "--dst", vip+":53")
	served := strings.TrimSpace(out)
	beAddr, ok := backendAddr[served]
	if !ok {
		t.Fatalf("the flow was answered by %q, not a lab backend", served)
	}
	beIP, _, _ := strings.Cut(beAddr, ":")
	t.Logf("flow %s:%d -> %s:53 is served by %s (%s)", client, clientPort, vip, served, beIP)

	// No backend knows a smaller path MTU to the client yet.
	for _, be := range []string{"be1", "be2", "be3"} {
		if m := routeMTU(t, lab, be, client); m != "" {
			t.Fatalf("%s already has mtu %s towards %s before the ICMP error", be, m, client)
		}
	}
	before, _ := lab.scrape()

	// A raw ICMP socket on every backend, bound to its own address, sees a
	// copy of each destination-unreachable addressed to it.
	watchers := map[string]*Proc{}
	for _, be := range []string{"be1", "be2", "be3"} {
		ip, _, _ := strings.Cut(backendAddr[be], ":")
		watchers[be] = lab.Start("icmpwatch-"+be, be, icmperrBin, "watch", "--local", ip, "--timeout", "10s")
	}
	for be, w := range watchers {
		waitFor(t, 5*time.Second, "icmp watcher in "+be, func() error {
			if strings.Contains(string(w.Output()), "ready") {
				return nil
			}
			if !w.Running() {
				return fmt.Errorf("exited: %v: %s", w.Wait(time.Second), w.Log())
			}
			return fmt.Errorf("not ready")
		})
	}

	// The error a router would send about the reply VIP:53 -> client:port
	// that was too big: to the VIP, quoting the reply as the client saw it.
	lab.MustRun("client", 10*time.Second, icmperrBin, "fragneeded",
		"--src", client, "--to", vip,
		"--quote-src", vip+":53", "--quote-dst", fmt.Sprintf("%s:%d", client, clientPort),
		"--mtu", fmt.Sprint(mtu))

	// The serving backend receives it translated: to its own address,
	// quoting what it really sent (its address and port 5353 -> the client).
	if err := watchers[served].Wait(5 * time.Second); err != nil {
		t.Fatalf("no ICMP error reached %s within 5s (not translated?): watcher: %v\n%s\nroute: %s",
			served, err, watchers[served].Log(), lab.MustRun(served, 5*time.Second, "ip", "route", "get", client))
	}
	var seen struct {
		From       string `json:"from"`
		Type       int    `json:"type"`
		Code       int    `json:"code"`
		MTU        int    `json:"mtu"`
		QuotedSrc  string `json:"quoted_src"`
		QuotedDst  string `json:"quoted_dst"`
		QuotedProt int    `json:"quoted_proto"`
		ICMPCsumOK bool   `json:"icmp_csum_ok"`
		QIPCsumOK  bool   `json:"quoted_ip_csum_ok"`
	}
	line := jsonLine(watchers[served].Output())
	if line == "" {
		t.Fatalf("%s received no ICMP error (translation missing?); watcher log:\n%s", served, watchers[served].Log())
	}
	if err := json.Unmarshal([]byte(line), &seen); err != nil {
		t.Fatalf("decode %q: %v", line, err)
	}
	t.Logf("%s received: %s", served, line)
	wantSrc, wantDst := beIP+":5353", fmt.Sprintf("%s:%d", client, clientPort)
	if seen.Type != 3 || seen.Code != 4 || seen.MTU != mtu || seen.From != client ||
		seen.QuotedSrc != wantSrc || seen.QuotedDst != wantDst || seen.QuotedProt != 17 {
		t.Errorf("%s got %+v, want type 3 code 4 mtu %d from %s quoting udp %s -> %s",
			served, seen, mtu, client, wantSrc, wantDst)
	}
	if !seen.ICMPCsumOK || !seen.QIPCsumOK {
		t.Errorf("%s got a translated error with a bad checksum: icmp ok %v, quoted ip ok %v",
			served, seen.ICMPCsumOK, seen.QIPCsumOK)
	}

	// Its kernel found the UDP socket from the quote and learnt the MTU.
	t.Logf("%s: %s", served, strings.TrimSpace(lab.MustRun(served, 5*time.Second, "ip", "route", "get", client)))
	if m := routeMTU(t, lab, served, client); m != fmt.Sprint(mtu) {
		t.Errorf("%s: route to %s has mtu %q after the error, want %d", served, client, m, mtu)
	}

	// The others got nothing and learnt nothing.
	time.Sleep(300 * time.Millisecond)
	for _, be := range []string{"be1", "be2", "be3"} {
		if be == served {
			continue
		}
		watchers[be].Stop(3 * time.Second)
		if line := jsonLine(watchers[be].Output()); line != "" {
			t.Errorf("%s, which did not serve the flow, received an ICMP error: %s", be, line)
		}
		if m := routeMTU(t, lab, be, client); m != "" {
			t.Errorf("%s, which did not serve the flow, has mtu %s towards %s", be, m, client)
		}
	}

	// The data path counted exactly this one.
	after, raw := lab.scrape()
	if d := after["sluice_icmp_translated_total"] - before["sluice_icmp_translated_total"]; d != 1 {
		t.Errorf("sluice_icmp_translated_total moved by %v, want 1\n%s", d, raw)
	}
}

var mtuRE = regexp.MustCompile(`\bmtu (\d+)`)

// routeMTU is the path MTU `ip route get dst` reports in host h ("" when none
// is cached).
func routeMTU(t *testing.T, l *Lab, h, dst string) string {
	t.Helper()
	out := l.MustRun(h, 5*time.Second, "ip", "route", "get", dst)
	if m := mtuRE.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}

// jsonLine is the first line of out that is a JSON object ("" if none).
func jsonLine(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "{") {
			return l
		}
	}
	return ""
}
