package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// grpcBackendBin is the built e2e/grpcbackend (see buildAll).
var grpcBackendBin string

// grpcTarget is the gRPC service sluice listens on (h2c).
var grpcTarget = httpVIP + ":80"

// grpcReport is what `grpcbackend call` prints.
type grpcReport struct {
	OK        int            `json:"ok"`
	Failed    int            `json:"failed"`
	ByBackend map[string]int `json:"by_backend"`
	Codes     map[string]int `json:"codes"`
	Errors    []string       `json:"errors"`
}

func (l *Lab) grpcCall(args ...string) (grpcReport, error) {
	l.t.Helper()
	out, err := l.Run("client", 60*time.Second, append([]string{grpcBackendBin, "call", "--target", grpcTarget, "--timeout", "5s"}, args...)...)
	if err != nil {
		return grpcReport{}, fmt.Errorf("grpcbackend call %v: %w\n%s", args, err, out)
	}
	var r grpcReport
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		return r, fmt.Errorf("grpcbackend call output %q: %w", out, err)
	}
	return r, nil
}

// startGRPCBackends runs the gRPC test backend on :80 in the given hosts
// (extra flags per host) and returns the processes.
func (l *Lab) startGRPCBackends(flags map[string][]string) map[string]*Proc {
	l.t.Helper()
	procs := map[string]*Proc{}
	for be, extra := range flags {
		procs[be] = l.Start("grpc-"+be, be, append([]string{grpcBackendBin, "serve", "--listen", ":80", "--name", be}, extra...)...)
	}
	for be := range flags {
		waitFor(l.t, 5*time.Second, be+" gRPC listening", func() error {
			_, err := l.Run(be, 2*time.Second, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80")
			return err
		})
	}
	return procs
}

// grpcService is a service at grpcTarget: h2c to clients, h2c to pool
// web's backends, unary UnaryCall retried on UNAVAILABLE.
func grpcService(accessLog string) string {
	return `  - name: grpc
    listen: ` + grpcTarget + `
    protocol: http
    pool: web
    h2c: true
    upgrades: []
    upstream: {protocol: h2c, max_streams: 50}
    timeouts: {connect: 1s, read: 5s, total: 20s}
    retry: {attempts: 3, on: [connect-failure, reset, timeout, grpc-unavailable], methods: [/grpc.testing.TestService/UnaryCall]}
    access_log: ` + accessLog + `
`
}

type grpcLogLine struct {
	URI        string `json:"uri"`
	Status     int    `json:"status"`
	GRPCStatus string `json:"grpc_status"`
	Try        []struct {
		Backend    string `json:"backend"`
		GRPCStatus string `json:"grpc_status"`
		Retry      bool   `json:"retry"`
		Why        string `json:"why"`
	} `json:"try"`
}

func readGRPCLog(t *testing.T, path string) []grpcLogLine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("access log: %v", err)
	}
	var out []grpcLogLine
	for l := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		if l == "" {
			continue
		}
		var ll grpcLogLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, ll)
	}
	return out
}

// TestGRPCFailoverEjection: gRPC through sluice to h2c backends. Unary
// calls that be2 answers UNAVAILABLE are failed over to be1 (the client
// sees no failure) and be2 is ejected for it (ejection.on's default
// counts grpc-unavailable); bidirectional streams work end to end, their
// grpc-status (a trailer) in the access log.
func TestGRPCFailoverEjection(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.startGRPCBackends(map[string][]string{"be1": nil, "be2": {"--unavailable"}})
	lab.AddLocalVIP(httpVIP)
	accessLog := filepath.Join(lab.dir, "grpc-access.log")
	agent := lab.StartAgent(agentConfig{
		Backends:      []string{"be1", "be2"},
		Ejection:      "{failures: 2, window: 10s, base_time: 60s, max_time: 120s, max_ejected_percent: 50}",
		ExtraServices: grpcService(accessLog),
	})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "active"})
	waitFor(t, 10*time.Second, "the gRPC listener", func() error {
		_, err := lab.grpcCall("--count", "1")
		return err
	})

	r, err := lab.grpcCall("--count", "20")
	if err != nil {
		t.Fatal(err)
	}
	if r.OK != 20 || r.ByBackend["be1"] != 20 {
		t.Fatalf("unary calls while be2 answers UNAVAILABLE: %+v", r)
	}
	agent.waitStates(t, 5*time.Second, map[string]string{backendAddr["be2"]: "ejected"})

	r, err = lab.grpcCall("--mode", "stream", "--count", "5", "--messages", "5")
	if err != nil {
		t.Fatal(err)
	}
	if r.OK != 5 || r.ByBackend["be1"] != 5 {
		t.Fatalf("streams: %+v", r)
	}

	// The access log is written in batches: wait for the last call's line.
	var lines []grpcLogLine
	waitFor(t, 5*time.Second, "the access log", func() error {
		lines = readGRPCLog(t, accessLog)
		if len(lines) < 26 {
			return fmt.Errorf("%d lines", len(lines))
		}
		return nil
	})
	var failedOver, streamed bool
	for _, l := range lines {
		if l.Status != 200 {
			t.Errorf("access log: status %d: %+v", l.Status, l)
		}
		switch {
		case strings.HasSuffix(l.URI, "/UnaryCall") && len(l.Try) == 2:
			if l.Try[0].GRPCStatus != "14" || !l.Try[0].Retry || l.GRPCStatus != "0" {
				t.Errorf("access log of a failed-over call: %+v", l)
			}
			failedOver = true
		case strings.HasSuffix(l.URI, "/FullDuplexCall"):
			if l.GRPCStatus != "0" {
				t.Errorf("access log of a stream: grpc_status %q, want 0 (from the trailer)", l.GRPCStatus)
			}
			streamed = true
		}
	}
	if !failedOver || !streamed {
		t.Errorf("access log: a failed-over call %v, a stream %v", failedOver, streamed)
	}
}

// TestGRPCDNSMove is the first field report over HTTP/2: the pool's DNS
// name moves from be1 to be2 while a stream is open on be1. New calls
// follow the name, the open stream finishes on be1 (its connection is
// drained, not cut), and then sluice's HTTP/2 connection to be1 is
// closed: nothing keeps traffic on an address DNS no longer returns.
func TestGRPCDNSMove(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	procs := lab.startGRPCBackends(map[string][]string{"be1": nil, "be2": nil})
	lab.AddLocalVIP(httpVIP)
	dns := lab.StartDNS("backend.lab. 1 A 198.18.2.11\n")
	accessLog := filepath.Join(lab.dir, "grpc-access.log")
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", DrainTimeout: 10 * time.Second, ExtraServices: grpcService(accessLog)})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active"})
	waitFor(t, 10*time.Second, "the gRPC listener", func() error {
		_, err := lab.grpcCall("--count", "1")
		return err
	})

	// A stream of 60 messages 100ms apart (6s) on be1.
	stream := lab.Start("stream", "client", grpcBackendBin, "call", "--target", grpcTarget, "--mode", "stream",
		"--messages", "60", "--interval", "100ms", "--timeout", "30s")
	waitFor(t, 5*time.Second, "the stream open on be1", func() error {
		if r, err := lab.grpcCall("--count", "3"); err != nil || r.ByBackend["be1"] != 3 {
			return fmt.Errorf("unary calls: %+v %v", r, err)
		}
		return nil
	})
	// Calls so far shared sluice's connections to be1 (multiplexed).
	opened := strings.Count(string(procs["be1"].Output()), "conn-open")
	if opened > 2 {
		t.Errorf("sluice opened %d HTTP/2 connections to be1 for one stream and a few unary calls", opened)
	}

	changed := time.Now()
	dns.Set("backend.lab. 1 A 198.18.2.12\n")
	waitFor(t, 10*time.Second, "calls following the name to be2", func() error {
		r, err := lab.grpcCall("--count", "1")
		if err != nil || r.ByBackend["be2"] != 1 {
			return fmt.Errorf("%+v %v", r, err)
		}
		return nil
	})
	t.Logf("calls moved to be2 %s after the DNS change", time.Since(changed).Round(time.Millisecond))
	r, err := lab.grpcCall("--count", "10")
	if err != nil || r.ByBackend["be2"] != 10 {
		t.Fatalf("after the move a call went elsewhere than be2: %+v %v", r, err)
	}

	// What keeps be1 draining is visible: no flow of the data path (the
	// HTTP stage terminates the connections), one request (the stream).
	be1 := backendAddr["be1"]
	if bs, err := agent.poolBackends(); err != nil {
		t.Errorf("status while the stream is open: %v", err)
	} else if b := bs[be1]; b.State != "draining" || b.Requests == nil || *b.Requests != 1 {
		t.Errorf("be1 in status while its stream is open: state %q, %d flows, requests %v; want draining with 1 request",
			b.State, b.ActiveFlows, b.Requests)
	}
	if out, err := agent.CLI("status"); err != nil || !regexp.MustCompile(`(?m)^web\s+`+regexp.QuoteMeta(be1)+`\s.*\sdraining\s.*\s0\s+1\s+\S+\s*$`).MatchString(out) {
		t.Errorf("sluice status does not show be1 draining with 0 flows and 1 request (%v):\n%s", err, out)
	}

	if err := stream.Wait(20 * time.Second); err != nil {
		t.Fatalf("the stream open through the DNS change: %v\n%s", err, stream.Log())
	}
	// Its request done, be1 is removed before its drain timeout (10s).
	bs := agent.waitStates(t, 5*time.Second, map[string]string{be1: "removed"})
	if b := bs[be1]; b.Cause != "no-flows" || b.Requests == nil || *b.Requests != 0 {
		t.Errorf("be1 after its stream: cause %q, requests %v; want no-flows with 0 requests", b.Cause, b.Requests)
	}
	var sr grpcReport
	if err := json.Unmarshal(stream.Output(), &sr); err != nil || sr.OK != 1 || sr.ByBackend["be1"] != 1 {
		t.Fatalf("the stream open through the DNS change was cut or moved: %+v %v\n%s", sr, err, stream.Log())
	}
	waitFor(t, 5*time.Second, "sluice's connections to be1 closed", func() error {
		out := string(procs["be1"].Output())
		if o, c := strings.Count(out, "conn-open"), strings.Count(out, "conn-closed"); o != c {
			return fmt.Errorf("be1: %d connections opened, %d closed", o, c)
		}
		return nil
	})
}
