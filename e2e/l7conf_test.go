package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The L7 conformance suite (issue 4): one test per behaviour of the HTTP
// stage, through the real binary, against test backends that count every
// request they execute (by the `rid` query parameter), answer chosen
// statuses, hang, close after the body or refuse connections.

// proc is the lab process started under name ("be1", "dns", ...).
func (l *Lab) proc(name string) *Proc {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.procs) - 1; i >= 0; i-- {
		if l.procs[i].Name == name {
			return l.procs[i]
		}
	}
	l.t.Fatalf("no process %q in the lab", name)
	return nil
}

// BackendStats is the test backend's /stats reply.
type BackendStats struct {
	Name     string            `json:"name"`
	Requests uint64            `json:"requests"`
	ByPath   map[string]uint64 `json:"by_path"`
	ByMethod map[string]uint64 `json:"by_method_path"`
	ByID     map[string]uint64 `json:"by_rid"`
	BigEnded map[string]struct {
		Result string  `json:"result"`
		MS     float64 `json:"ms"`
		Bytes  int64   `json:"bytes"`
	} `json:"big_ended"`
	Accepted uint64 `json:"accepted"`
}

// stats reads backend be's counters (from inside its namespace). A backend
// that is not running counts nothing.
func (l *Lab) stats(be string) BackendStats {
	l.t.Helper()
	var s BackendStats
	out, err := l.Run(be, 5*time.Second, "curl", "-s", "--max-time", "2", "http://127.0.0.1:80/stats")
	if err != nil {
		if strings.Contains(err.Error(), "exit status 7") { // refused: stopped
			return s
		}
		l.t.Fatalf("stats of %s: %v", be, err)
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		l.t.Fatalf("stats of %s: %v: %s", be, err, out)
	}
	return s
}

// executions is how often the request with id rid was executed, by backend.
func (l *Lab) executions(rid string) (map[string]uint64, uint64) {
	l.t.Helper()
	m := map[string]uint64{}
	var total uint64
	for _, be := range []string{"be1", "be2", "be3"} {
		if n := l.stats(be).ByID[rid]; n > 0 {
			m[be] = n
			total += n
		}
	}
	return m, total
}

// totalExecuted is the sum of every backend's executed requests.
func (l *Lab) totalExecuted() uint64 {
	l.t.Helper()
	var n uint64
	for _, be := range []string{"be1", "be2", "be3"} {
		n += l.stats(be).Requests
	}
	return n
}

// setMode switches backend be's behaviour (/control/mode).
func (l *Lab) setMode(be, mode string) {
	l.t.Helper()
	l.MustRun(be, 5*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null",
		"http://127.0.0.1:80/control/mode?mode="+mode)
}

// HTTPResult is one curl exchange from the client.
type HTTPResult struct {
	Code    int
	Backend string
	Elapsed time.Duration
	Body    string
	Exit    int // curl's exit status (18: partial body, 52: empty reply, 56: receive failure)
}

// curl sends one request from the client (a new connection) and returns
// its status (0: no response), X-Backend and duration.
func (l *Lab) curl(method, url string, extra ...string) HTTPResult {
	l.t.Helper()
	argv := []string{"curl", "-s", "-X", method, "--max-time", "10", "-D", "-", "-H", "Expect:",
		"-w", "\n__CODE__ %{http_code} %{time_total}\n"}
	argv = append(argv, extra...)
	argv = append(argv, url)
	out, err := l.Run("client", 15*time.Second, argv...)
	var r HTTPResult
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		r.Exit = ee.ExitCode()
	}
	var body strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if rest, ok := strings.CutPrefix(line, "__CODE__ "); ok {
			f := strings.Fields(rest)
			if len(f) == 2 {
				r.Code, _ = strconv.Atoi(f[0])
				secs, _ := strconv.ParseFloat(f[1], 64)
				r.Elapsed = time.Duration(secs * float64(time.Second))
			}
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "X-Backend") {
			r.Backend = strings.TrimSpace(v)
		}
		body.WriteString(line + "\n")
	}
	r.Body = body.String()
	return r
}

// AccessLine is one access log line of the L7 stage.
type AccessLine struct {
	Service string `json:"service"`
	Client  string `json:"client"`
	Method  string `json:"method"`
	URI     string `json:"uri"`
	Status  int    `json:"status"`
	Error   string `json:"error"`
	Tries   int    `json:"tries"`
	Try     []struct {
		Backend       string `json:"backend"`
		Outcome       string `json:"outcome"`
		Phase         string `json:"phase"`
		Status        int    `json:"status"`
		Sent          bool   `json:"sent"`
		Resent        int    `json:"resent"`
		Early         bool   `json:"early"`
		Trial         bool   `json:"trial"`
		Retry         bool   `json:"retry"`
		BudgetRefused bool   `json:"budget_refused"`
		Why           string `json:"why"`
	} `json:"try"`
}

// accessLog is every access log line the agent wrote on stdout so far.
func (a *Agent) accessLog() []AccessLine {
	var lines []AccessLine
	sc := bufio.NewScanner(bytes.NewReader(a.proc.Output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b := sc.Bytes()
		if !bytes.Contains(b, []byte(`"msg":"access"`)) {
			continue
		}
		var al AccessLine
		if json.Unmarshal(b, &al) == nil {
			lines = append(lines, al)
		}
	}
	return lines
}

// accessFor waits (the log is batched, up to 1s) for the line of rid.
func (a *Agent) accessFor(t *testing.T, rid string) AccessLine {
	t.Helper()
	var found AccessLine
	waitFor(t, 5*time.Second, "the access log line of "+rid, func() error {
		for _, al := range a.accessLog() {
			if strings.Contains(al.URI, "rid="+rid+"") {
				found = al
				return nil
			}
		}
		return fmt.Errorf("not written yet")
	})
	return found
}

var ridSeq int

func newRID(prefix string) string {
	ridSeq++
	return fmt.Sprintf("%s%d-%d", prefix, time.Now().UnixNano()%1e6, ridSeq)
}

// startL7 starts the backends and the agent with an HTTP service and waits
// for its listener.
func startL7(t *testing.T, c agentConfig) (*Lab, *Agent) {
	t.Helper()
	return startL7After(t, c, nil)
}

// startL7After is startL7 with before run on the lab first (a sysctl in
// the lb, say); nil: nothing.
func startL7After(t *testing.T, c agentConfig, before func(*Lab)) (*Lab, *Agent) {
	t.Helper()
	lab := newLab(t)
	if before != nil {
		before(lab)
	}
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	c.HTTP = true
	agent := lab.StartAgent(c)
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})
	return lab, agent
}

// firstOn sends requests built by send (each with a fresh rid) until one
// was first tried on backend be, and returns that request's result, rid and
// access log line. While the other backends answer, "first tried on be" is
// "executed by be" (the backends' counters); when be cannot execute
// anything (stopped), the access log says where each went (slower: it is
// written in batches). Requests that went elsewhere are checked by other.
func firstOn(t *testing.T, lab *Lab, agent *Agent, be string, send func(rid string) HTTPResult,
	other func(rid string, r HTTPResult)) (HTTPResult, string, AccessLine) {
	t.Helper()
	viaLog := !lab.proc(be).Running()
	for i := 0; i < 40; i++ {
		rid := newRID("r")
		r := send(rid)
		var hit bool
		if viaLog {
			al := agent.accessFor(t, rid)
			hit = len(al.Try) > 0 && al.Try[0].Backend == backendAddr[be]
		} else {
			by, _ := lab.executions(rid)
			hit = by[be] > 0
		}
		if hit {
			return r, rid, agent.accessFor(t, rid)
		}
		if other != nil {
			other(rid, r)
		}
	}
	t.Fatalf("40 requests, none tried on %s first", be)
	return HTTPResult{}, "", AccessLine{}
}

// noEjection keeps every backend in rotation whatever it answers, so the
// retry rules are tested alone.
const noEjection = "{failures: 0}"

// TestL7RetryRules: which failed requests are retried, and that a request
// whose bytes reached a backend is executed once unless it is declared safe.
func TestL7RetryRules(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{
		Ejection: noEjection,
		Retry: "{attempts: 3, on: [connect-failure, reset, timeout, 502, 503, 504], methods: [GET, HEAD], " +
			"idempotency_header: Idempotency-Key, buffer_bytes: 1024}",
	})
	post := func(rid string, extra ...string) HTTPResult {
		args := append([]string{"--data-binary", "order=1"}, extra...)
		return lab.curl("POST", httpURL+"?rid="+rid, args...)
	}

	// be1 reads the whole body, then closes without answering.
	lab.setMode("be1", "close-after-body")
	t.Run("POST closed after the body is not retried", func(t *testing.T) {
		r, rid, al := firstOn(t, lab, agent, "be1", func(rid string) HTTPResult { return post(rid) }, nil)
		by, n := lab.executions(rid)
		if n != 1 || r.Code != 502 {
			t.Errorf("POST closed by be1 after its body: client got %d, executed %d times %v; want 502, executed once", r.Code, n, by)
		}
		if len(al.Try) != 1 || al.Try[0].Retry {
			t.Errorf("access log: want one try, not retried: %+v", al)
		}
		t.Logf("why: %s", al.Try[0].Why)
	})
	t.Run("POST with the idempotency header is retried once", func(t *testing.T) {
		r, rid, al := firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return post(rid, "-H", "Idempotency-Key: "+rid)
		}, nil)
		by, n := lab.executions(rid)
		if r.Code != 200 || n != 2 || by["be1"] != 1 || r.Backend == "be1" {
			t.Errorf("idempotent POST closed by be1: client got %d from %q, executions %v; want 200 from another backend, be1 once and one retry", r.Code, r.Backend, by)
		}
		if len(al.Try) != 2 || !al.Try[0].Retry {
			t.Errorf("access log: want two tries, the first retried: %+v", al)
		}
	})
	// be1 sends a header and part of the body, then closes.
	lab.setMode("be1", "close-mid-response")
	t.Run("GET cut mid-response is not retried and the client sees it cut", func(t *testing.T) {
		r, rid, al := firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return lab.curl("GET", httpURL+"?rid="+rid)
		}, nil)
		by, n := lab.executions(rid)
		if n != 1 {
			t.Errorf("GET cut by be1 mid-response executed %v, want once (response bytes had reached the client)", by)
		}
		// The client sees a broken exchange, never a complete response.
		if r.Exit == 0 {
			t.Errorf("GET cut mid-response: curl got %d from %q and exited 0: want the connection aborted", r.Code, r.Backend)
		}
		t.Logf("client: status %d, curl exit %d", r.Code, r.Exit)
		if len(al.Try) != 1 || al.Try[0].Retry {
			t.Errorf("access log: want one try, not retried: %+v", al)
		}
	})
	lab.setMode("be1", "normal")

	// be1 answers 503 to everything.
	lab.setFail("be1", 503)
	t.Run("PUT excluded from retry.methods is never retried", func(t *testing.T) {
		r, rid, al := firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return lab.curl("PUT", httpURL+"?rid="+rid, "--data-binary", "v=1")
		}, nil)
		by, n := lab.executions(rid)
		if r.Code != 503 || n != 1 {
			t.Errorf("PUT answered 503 by be1: client got %d, executions %v; want be1's 503, executed once", r.Code, by)
		}
		if len(al.Try) != 1 || al.Try[0].Retry || !strings.Contains(al.Try[0].Why, "retry.methods") {
			t.Errorf("access log: want one try, not retried because of retry.methods: %+v", al)
		}
		// The same status on a GET is retried: the method alone decided.
		r, rid, _ = firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return lab.curl("GET", httpURL+"?rid="+rid)
		}, nil)
		if by, n := lab.executions(rid); r.Code != 200 || n != 2 {
			t.Errorf("GET answered 503 by be1: client got %d, executions %v; want 200 after one retry", r.Code, by)
		}
	})
	t.Run("body above buffer_bytes is not retried after sending", func(t *testing.T) {
		big := strings.Repeat("x", 8192)
		r, rid, al := firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return lab.curl("POST", httpURL+"?rid="+rid, "-H", "Idempotency-Key: "+rid, "--data-binary", big)
		}, nil)
		by, n := lab.executions(rid)
		if r.Code != 503 || n != 1 {
			t.Errorf("8 KiB idempotent POST answered 503 by be1 (buffer_bytes 1024): client got %d, executions %v; want 503, executed once", r.Code, by)
		}
		if len(al.Try) != 1 || al.Try[0].Retry || !strings.Contains(al.Try[0].Why, "buffer_bytes") {
			t.Errorf("access log: want one try, not retried because of buffer_bytes: %+v", al)
		} else {
			t.Logf("why: %s", al.Try[0].Why)
		}
		// The same request with a small body is retried.
		r, rid, _ = firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return lab.curl("POST", httpURL+"?rid="+rid, "-H", "Idempotency-Key: "+rid, "--data-binary", "small")
		}, nil)
		if by, n := lab.executions(rid); r.Code != 200 || n != 2 {
			t.Errorf("small idempotent POST answered 503 by be1: client got %d, executions %v; want 200 after one retry", r.Code, by)
		}
	})
	lab.setFail("be1", 0)

	// be1 is stopped: connects to it are refused.
	lab.proc("be1").Stop(3 * time.Second)
	t.Run("POST whose connect is refused is retried and executed once", func(t *testing.T) {
		r, rid, al := firstOn(t, lab, agent, "be1", func(rid string) HTTPResult {
			return lab.curl("POST", httpURL+"?rid="+rid, "--data-binary", "order=1")
		}, func(rid string, r HTTPResult) {
			if _, n := lab.executions(rid); r.Code != 200 || n != 1 {
				t.Errorf("POST %s not tried on be1: %d, executed %d times", rid, r.Code, n)
			}
		})
		by, n := lab.executions(rid)
		if r.Code != 200 || n != 1 {
			t.Errorf("POST refused by be1: client got %d, executions %v; want 200, executed once", r.Code, by)
		}
		if len(al.Try) != 2 || al.Try[0].Outcome != "connect-failure" || al.Try[0].Sent || !al.Try[0].Retry {
			t.Errorf("access log: want a connect-failure (nothing sent) retried, then success: %+v", al)
		}
	})
}

// TestL7Timeouts: a response header that never comes costs `timeouts.read`
// (504); retried tries share one `timeouts.total` deadline, so three slow
// tries end at total, not at the sum of their phases.
func TestL7Timeouts(t *testing.T) {
	parallel(t)
	const read, total = time.Second, 2500 * time.Millisecond
	lab, agent := startL7(t, agentConfig{Ejection: noEjection, Timeouts: "{connect: 1s, read: 1s, total: 2500ms}"})

	t.Run("504 at timeouts.read", func(t *testing.T) {
		rid := newRID("slowpost")
		// POST is not in retry.methods: one try.
		r := lab.curl("POST", httpURL+"slow?ms=8000&rid="+rid, "--data-binary", "x")
		if r.Code != 504 || r.Elapsed < read-100*time.Millisecond || r.Elapsed > read+600*time.Millisecond {
			t.Errorf("no response header: client got %d after %s, want 504 after ~%s (timeouts.read)", r.Code, r.Elapsed, read)
		}
		t.Logf("POST with no response header: %d after %s", r.Code, r.Elapsed)
		al := agent.accessFor(t, rid)
		if len(al.Try) != 1 || al.Try[0].Outcome != "timeout" || al.Try[0].Phase != "read" {
			t.Errorf("access log: want one try, timeout in phase read: %+v", al)
		}
		if _, n := lab.executions(rid); n != 1 {
			t.Errorf("executed %d times, want once", n)
		}
	})
	t.Run("three slow tries end at timeouts.total", func(t *testing.T) {
		rid := newRID("slowget")
		r := lab.curl("GET", httpURL+"slow?ms=8000&rid="+rid)
		// The sum of the read phases would be 3s, of all phases far more.
		if r.Code != 504 || r.Elapsed < total-100*time.Millisecond || r.Elapsed > total+400*time.Millisecond {
			t.Errorf("three slow tries: client got %d after %s, want 504 after ~%s (timeouts.total)", r.Code, r.Elapsed, total)
		}
		t.Logf("GET, three slow tries: %d after %s", r.Code, r.Elapsed)
		al := agent.accessFor(t, rid)
		if len(al.Try) != 3 || al.Try[2].Phase != "total" {
			t.Errorf("access log: want three tries, the last one cut by the total deadline: %+v", al)
		}
		by, n := lab.executions(rid)
		if n != 3 || len(by) != 3 {
			t.Errorf("executions %v: want one on each backend", by)
		}
	})
}

// TestL7EjectionTrial is nginx's max_fails/fail_timeout rule with backoff:
// a backend answering 503 is ejected after `failures`, gets exactly one
// trial request after each ejection time, is ejected again for twice as
// long when the trial fails, and is back for good when one succeeds. The
// clients see 200s throughout.
func TestL7EjectionTrial(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{
		Ejection: "{failures: 2, window: 10s, base_time: 1s, max_time: 8s, max_ejected_percent: 50}",
	})
	before := lab.stats("be3").Requests
	lab.setFail("be3", 503)
	failedAt := time.Now()

	// One request at a time: each trial is exactly one request.
	r := lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "1", "--interval", "20ms",
		"--count", "300", "--duration", "6s")
	if r.Failures != 0 || r.ByBackend["be3"] != 0 {
		t.Errorf("while be3 answers 503: %d failures %v, %d answers from be3; want none", r.Failures, r.Errors, r.ByBackend["be3"])
	}
	st, err := agent.poolBackends()
	if err != nil {
		t.Fatal(err)
	}
	if st[backendAddr["be3"]].State != "ejected" {
		t.Errorf("be3 after 6s of 503s: %s (%s), want ejected", st[backendAddr["be3"]].State, st[backendAddr["be3"]].Cause)
	}
	executed := lab.stats("be3").Requests - before

	ejections := agentLogEvents(agent, "backend ejected", backendAddr["be3"], failedAt)
	if len(ejections) < 2 {
		t.Fatalf("be3 ejected %d times in 6s (base_time 1s), want at least 2:\n%s", len(ejections), agent.proc.Log())
	}
	want := time.Second
	for i, ev := range ejections {
		// Up to 10% is taken off at random (ejected addresses do not come back together).
		if d, err := time.ParseDuration(ev.attrs["for"]); err != nil || d > want || d < want*9/10-time.Millisecond {
			t.Errorf("ejection %d of be3 for %s, want %s less up to 10%% (doubling from base_time)", i+1, ev.attrs["for"], want)
		}
		if i > 0 {
			prev := ejections[i-1]
			d, _ := time.ParseDuration(prev.attrs["for"])
			if gap := ev.at.Sub(prev.at); gap < d*9/10-50*time.Millisecond {
				t.Errorf("ejection %d came %s after the previous one of %s: the trial was sent early", i+1, gap, d)
			}
		}
		want = min(2*want, 8*time.Second)
	}
	// 2 failures to be ejected, then one failed trial per re-ejection.
	if wantN := uint64(2 + len(ejections) - 1); executed != wantN {
		t.Errorf("be3 executed %d requests over %d ejections, want %d (2 failures + one trial per re-ejection)", executed, len(ejections), wantN)
	}
	trials := 0
	for _, al := range agent.accessLog() {
		for _, tr := range al.Try {
			if tr.Backend == backendAddr["be3"] && tr.Trial {
				trials++
			}
		}
	}
	if trials != len(ejections)-1 {
		t.Errorf("access log marks %d trial tries on be3, want %d", trials, len(ejections)-1)
	}
	t.Logf("be3: %d ejections, %d executions, %d trials", len(ejections), executed, trials)

	// Healthy again: the next trial succeeds and brings it back for good.
	trialsBefore := trials
	lab.setFail("be3", 0)
	waitFor(t, 15*time.Second, "be3 back after a successful trial", func() error {
		r := lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "1", "--interval", "20ms", "--count", "50", "--duration", "2s")
		if r.Failures != 0 {
			t.Errorf("failures while be3 recovers: %v", r.Errors)
		}
		if r.ByBackend["be3"] < 5 {
			return fmt.Errorf("be3 answered %d of %d", r.ByBackend["be3"], r.Requests)
		}
		return nil
	})
	// Back for good means: one trial, then ordinary requests (not one at a
	// time, not each logged as another recovery).
	if got := agentLogEvents(agent, "backend recovered by a trial request", backendAddr["be3"], failedAt); len(got) != 1 {
		t.Errorf("want one recovery by a trial request in the log, got %d", len(got))
	}
	time.Sleep(1100 * time.Millisecond) // the access log is written in batches
	trials = 0
	for _, al := range agent.accessLog() {
		for _, tr := range al.Try {
			if tr.Backend == backendAddr["be3"] && tr.Trial {
				trials++
			}
		}
	}
	if trials-trialsBefore != 1 {
		t.Errorf("be3 healthy again: %d requests marked as trials after it recovered, want 1 (the one that brought it back)", trials-trialsBefore)
	}
	if state, _ := agent.BackendState(backendAddr["be3"]); state != "active" {
		t.Errorf("be3 after a successful trial: %q, want active", state)
	}
}

// logEvent is one line of the agent's text log.
type logEvent struct {
	at    time.Time
	attrs map[string]string
}

var logAttr = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// agentLogEvents returns the agent's log lines with message msg about
// address addr, logged after since.
func agentLogEvents(a *Agent, msg, addr string, since time.Time) []logEvent {
	var evs []logEvent
	for _, line := range strings.Split(a.proc.Log(), "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) || !strings.Contains(line, "address="+addr) {
			continue
		}
		ev := logEvent{attrs: map[string]string{}}
		for _, m := range logAttr.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			ev.attrs[m[1]] = v
		}
		ev.at, _ = time.Parse(time.RFC3339Nano, ev.attrs["time"])
		if ev.at.Before(since) {
			continue
		}
		evs = append(evs, ev)
	}
	return evs
}

// TestL7RetryBudget: when every backend fails under concurrent load, the
// retry budget bounds the extra tries (executions counted by the backends
// against requests sent), and no more than max_ejected_percent of the pool
// is ejected.
func TestL7RetryBudget(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{})
	for _, be := range []string{"be1", "be2", "be3"} {
		lab.setFail(be, 503)
	}
	before := lab.totalExecuted()
	m0, _ := lab.scrape()

	load := lab.StartLoad("load", nil, "--url", httpURL, "--mode", "keepalive", "--conns", "12",
		"--interval", "10ms", "--count", "1200", "--duration", "20s", "--timeout", "3s")
	t.Cleanup(func() { load.Stop(3 * time.Second) })
	maxEjected := 0
	for i := 0; i < 200 && load.Running(); i++ {
		if st, err := agent.poolBackends(); err == nil {
			n := 0
			for _, b := range st {
				if b.State == "ejected" {
					n++
				}
			}
			maxEjected = max(maxEjected, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := load.Wait(20 * time.Second); err != nil {
		t.Fatalf("load: %v", err)
	}
	rep := parseReport(t, load.Output())
	executed := lab.totalExecuted() - before
	m1, _ := lab.scrape()
	retries := sumMetric(m1, "sluice_l7_retries_total{") - sumMetric(m0, "sluice_l7_retries_total{")
	refused := sumMetric(m1, "sluice_l7_retries_budget_refused_total{") - sumMetric(m0, "sluice_l7_retries_budget_refused_total{")
	t.Logf("%d requests (%v), %d executions, %v retries, %v refused by the budget, at most %d ejected",
		rep.Requests, rep.Errors, executed, retries, refused, maxEjected)

	if rep.Requests < 300 || rep.Errors["status_503"] != rep.Requests {
		t.Errorf("want every request answered with the backends' 503: %d requests, %v", rep.Requests, rep.Errors)
	}
	// Without a budget every request would be tried 3 times.
	if extra := executed - uint64(rep.Requests); extra*2 > uint64(rep.Requests) {
		t.Errorf("%d executions for %d requests: %d retries, over half the requests (budget_percent 20)", executed, rep.Requests, extra)
	}
	if float64(executed-uint64(rep.Requests)) != retries {
		t.Errorf("backends executed %d retries, sluice_l7_retries_total says %v", executed-uint64(rep.Requests), retries)
	}
	if refused < 1 {
		t.Errorf("sluice_l7_retries_budget_refused_total did not move")
	}
	if maxEjected > 1 {
		t.Errorf("%d of 3 backends ejected at once, max_ejected_percent 50 allows 1", maxEjected)
	}
	if maxEjected == 0 {
		t.Errorf("no backend ejected while all answer 503")
	}
}

// sumMetric sums the samples whose printed name and labels start with prefix.
func sumMetric(m map[string]float64, prefix string, contains ...string) float64 {
	var s float64
next:
	for k, v := range m {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		for _, c := range contains {
			if !strings.Contains(k, c) {
				continue next
			}
		}
		s += v
	}
	return s
}

// TestL7Reload: reloads (`sluice reload` and SIGHUP) that change the HTTP
// service's pool and timeouts under keep-alive and new-connection load lose
// no request and no client connection.
func TestL7Reload(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{})
	const conns = 4
	keep := lab.StartLoad("keepalive", nil, "--url", httpURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(conns), "--interval", "20ms", "--count", "100000", "--duration", "40s", "--timeout", "3s")
	t.Cleanup(func() { keep.Stop(3 * time.Second) })
	fresh := lab.StartLoad("newconn", nil, "--url", httpURL, "--mode", "newconn",
		"--conns", "2", "--interval", "20ms", "--count", "100000", "--duration", "40s", "--timeout", "3s")
	t.Cleanup(func() { fresh.Stop(3 * time.Second) })
	time.Sleep(time.Second)

	agent.WriteConfig(agentConfig{HTTP: true, Backends: []string{"be1", "be2"},
		Timeouts: "{connect: 1s, read: 3s, total: 6s}"})
	if _, err := agent.CLI("reload"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	time.Sleep(time.Second)
	b3 := lab.stats("be3").Requests
	time.Sleep(time.Second)
	if n := lab.stats("be3").Requests - b3; n != 0 {
		t.Errorf("be3 left the pool but executed %d requests a second after the reload", n)
	}

	agent.WriteConfig(agentConfig{HTTP: true})
	if err := agent.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	agent.WriteRawConfig("services: [{name: broken\n")
	if _, err := agent.CLI("reload"); err == nil {
		t.Errorf("reload of a broken config succeeded")
	}
	time.Sleep(time.Second)

	keep.Stop(5 * time.Second)
	fresh.Stop(5 * time.Second)
	kr, fr := parseReport(t, keep.Output()), parseReport(t, fresh.Output())
	assertNoFailures(t, "keep-alive load through the L7 stage across reloads", kr)
	assertNoFailures(t, "new-connection load through the L7 stage across reloads", fr)
	if kr.Dials != conns {
		t.Errorf("keep-alive clients dialled %d times, want %d: a reload closed client connections", kr.Dials, conns)
	}
	if kr.ByBackend["be3"] == 0 || fr.ByBackend["be3"] == 0 {
		t.Errorf("be3 came back with SIGHUP but got no request: %v %v", kr.ByBackend, fr.ByBackend)
	}
	t.Logf("keep-alive %d requests %v, new connections %d requests %v", kr.Requests, kr.ByBackend, fr.Requests, fr.ByBackend)
}

// TestL7RetryWithoutEjection (issue 16): what is retried (retry.on) and what
// ejects (the pool's ejection.on) are apart. With retry.on: [503] and an
// ejection.on without 503, a backend answering 503 — an application's 503
// through a healthy ALB node — is retried on another backend every time and
// never ejected.
func TestL7RetryWithoutEjection(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{
		Ejection: "{failures: 2, window: 10s, base_time: 1s, max_time: 8s, max_ejected_percent: 50, on: [connect-failure, reset, timeout]}",
		Retry:    "{attempts: 3, on: [503], methods: [GET, HEAD]}",
	})
	before := lab.stats("be3").Requests
	lab.setFail("be3", 503)
	failedAt := time.Now()

	r := lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "2", "--interval", "20ms",
		"--count", "150", "--duration", "5s")
	if r.Failures != 0 || r.ByBackend["be3"] != 0 {
		t.Errorf("while be3 answers 503: %d failures %v, %d answers from be3; want every 503 retried", r.Failures, r.Errors, r.ByBackend["be3"])
	}
	executed := lab.stats("be3").Requests - before
	// Two failures within the window would have ejected it: it kept
	// getting its share of first tries instead.
	if executed < 10 {
		t.Errorf("be3 executed %d of %d requests while answering 503, want its share (it must not be ejected)", executed, r.Requests)
	}
	st, err := agent.poolBackends()
	if err != nil {
		t.Fatal(err)
	}
	if s := st[backendAddr["be3"]]; s.State != "active" {
		t.Errorf("be3 after answering 503: %s (%s), want active: 503 is not in ejection.on", s.State, s.Cause)
	}
	if evs := agentLogEvents(agent, "backend ejected", backendAddr["be3"], failedAt); len(evs) != 0 {
		t.Errorf("be3 ejected %d times, want never", len(evs))
	}
	time.Sleep(1100 * time.Millisecond) // the access log is written in batches
	retried := 0
	for _, al := range agent.accessLog() {
		for _, tr := range al.Try {
			if tr.Backend == backendAddr["be3"] && tr.Status == 503 && tr.Retry {
				retried++
			}
		}
	}
	if retried == 0 {
		t.Errorf("no try on be3 logged as a retried 503")
	}
	t.Logf("be3: %d executions, %d retried 503s", executed, retried)
}
