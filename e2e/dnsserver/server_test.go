package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicelb/sluice/internal/syncbuf"
)

const records = `# lab records
backend.lab. 2 A 198.18.2.11
backend.lab. 2 A 198.18.2.12
alias.lab.   5 CNAME backend.lab.
v6.lab.      5 AAAA 2001:db8::1
sick.lab.    2 A 198.18.2.13
sick.lab. mode servfail
no.lab. mode refused
gone.lab. mode nxdomain
hollow.lab. mode empty
junk.lab. mode garbage
mute.lab. mode drop
cut.lab. 2 A 198.18.2.14
cut.lab. mode truncate
`

type harness struct {
	addr   string
	path   string
	reload chan struct{}
	logs   *syncbuf.Buffer
}

func start(t *testing.T, body string) *harness {
	t.Helper()
	h := &harness{path: filepath.Join(t.TempDir(), "records"), reload: make(chan struct{}, 1), logs: &syncbuf.Buffer{}}
	if err := os.WriteFile(h.path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := newServer(h.path, 1, slog.New(slog.NewTextHandler(h.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	pc, l, err := listenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = pc.LocalAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.serve(ctx, pc, l, 10*time.Millisecond, h.reload) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return h
}

// replace puts body in the records file whole: written beside it and
// renamed into place. A file caught half written (empty, between the
// truncate and the write of an in-place rewrite) is a valid zone with no
// records, which answers NXDOMAIN: on a loaded machine the writer can be
// descheduled in between long enough for the server's poll to load it.
func (h *harness) replace(t *testing.T, body string) {
	t.Helper()
	tmp := h.path + ".new"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) query(t *testing.T, network, name string, qtype uint16) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(1232, false)
	r, _, err := c.Exchange(q, h.addr)
	return r, err
}

func answerAddrs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		case *dns.CNAME:
			out = append(out, "cname:"+v.Target)
		}
	}
	slices.Sort(out)
	return out
}

func TestAnswers(t *testing.T) {
	h := start(t, records)
	tests := []struct {
		network, name string
		qtype         uint16
		rcode         int
		answers       []string
		truncated     bool
	}{
		{"udp", "backend.lab.", dns.TypeA, dns.RcodeSuccess, []string{"198.18.2.11", "198.18.2.12"}, false},
		{"tcp", "BACKEND.lab.", dns.TypeA, dns.RcodeSuccess, []string{"198.18.2.11", "198.18.2.12"}, false},
		{"udp", "alias.lab.", dns.TypeA, dns.RcodeSuccess, []string{"198.18.2.11", "198.18.2.12", "cname:backend.lab."}, false},
		{"udp", "backend.lab.", dns.TypeAAAA, dns.RcodeSuccess, nil, false},
		{"udp", "v6.lab.", dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:db8::1"}, false},
		{"udp", "unknown.lab.", dns.TypeA, dns.RcodeNameError, nil, false},
		{"udp", "sick.lab.", dns.TypeA, dns.RcodeServerFailure, nil, false},
		{"udp", "no.lab.", dns.TypeA, dns.RcodeRefused, nil, false},
		{"udp", "gone.lab.", dns.TypeA, dns.RcodeNameError, nil, false},
		{"udp", "hollow.lab.", dns.TypeA, dns.RcodeSuccess, nil, false},
		{"udp", "cut.lab.", dns.TypeA, dns.RcodeSuccess, nil, true},
		{"tcp", "cut.lab.", dns.TypeA, dns.RcodeSuccess, []string{"198.18.2.14"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.network+" "+tt.name+" "+dns.TypeToString[tt.qtype], func(t *testing.T) {
			r, err := h.query(t, tt.network, tt.name, tt.qtype)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tt.rcode || r.Truncated != tt.truncated || !slices.Equal(answerAddrs(r), tt.answers) {
				t.Errorf("rcode %s tc %v answers %v", dns.RcodeToString[r.Rcode], r.Truncated, answerAddrs(r))
			}
			if !r.Authoritative {
				t.Error("not authoritative")
			}
			if r.Rcode == dns.RcodeNameError || (r.Rcode == dns.RcodeSuccess && len(r.Answer) == 0 && !r.Truncated) {
				if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
					t.Errorf("negative answer without SOA: %v", r.Ns)
				}
			}
		})
	}
	// A query is logged after its reply is written: a handler may still be
	// on its way to the log line when the client already has its answer.
	waitFor(t, "queries logged", func() bool {
		logs := h.logs.String()
		return strings.Contains(logs, "name=alias.lab.") && strings.Contains(logs, "mode=servfail")
	})
}

func TestFaultModes(t *testing.T) {
	h := start(t, records)
	_, err := h.query(t, "udp", "junk.lab.", dns.TypeA)
	if err == nil {
		t.Error("garbage parsed")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("garbage mode timed out instead: %v", err)
	}
	t0 := time.Now()
	_, err = h.query(t, "udp", "mute.lab.", dns.TypeA)
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("drop mode: %v, want a timeout", err)
	}
	if time.Since(t0) < 250*time.Millisecond {
		t.Error("drop mode answered early")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReload(t *testing.T) {
	h := start(t, "backend.lab. 2 A 198.18.2.11\n")
	addrsOf := func() []string {
		r, err := h.query(t, "udp", "backend.lab.", dns.TypeA)
		if err != nil {
			return []string{err.Error()}
		}
		return append(answerAddrs(r), dns.RcodeToString[r.Rcode])
	}
	if got := addrsOf(); !slices.Equal(got, []string{"198.18.2.11", "NOERROR"}) {
		t.Fatalf("initial %v", got)
	}
	// Rewritten in place: picked up by the mtime poll.
	if err := os.WriteFile(h.path, []byte("backend.lab. 2 A 198.18.2.12\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "switch to .12", func() bool { return slices.Equal(addrsOf(), []string{"198.18.2.12", "NOERROR"}) })

	// Replaced by rename, to a fault mode.
	h.replace(t, "backend.lab. 2 A 198.18.2.12\nbackend.lab. mode servfail\n")
	waitFor(t, "servfail", func() bool { return slices.Equal(addrsOf(), []string{"SERVFAIL"}) })

	// A broken file is refused; the previous records keep serving.
	h.replace(t, "backend.lab. 2 A not-an-ip\n")
	waitFor(t, "refusal logged", func() bool { return strings.Contains(h.logs.String(), "reload refused") })
	if got := addrsOf(); !slices.Equal(got, []string{"SERVFAIL"}) {
		t.Errorf("after a broken file: %v", got)
	}

	// SIGHUP path: an explicit reload.
	if err := os.WriteFile(h.path, []byte("backend.lab. 2 A 198.18.2.13\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.reload <- struct{}{}
	waitFor(t, "switch to .13", func() bool { return slices.Equal(addrsOf(), []string{"198.18.2.13", "NOERROR"}) })
}

func TestParseZoneErrors(t *testing.T) {
	for _, body := range []string{
		"backend.lab. mode sometimes\n",
		"backend.lab. mode\n",
		"backend.lab. 2 A 300.1.1.1\n",
		"backend.lab. 2 BOGUS x\n",
	} {
		if _, err := parseZone(strings.NewReader(body)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: %v", body, err)
		}
	}
}

func TestRunFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), nil, &out); err == nil {
		t.Error("missing --records accepted")
	}
	if err := run(t.Context(), []string{"--records", filepath.Join(t.TempDir(), "none"), "--listen", "127.0.0.1:0"}, &out); err == nil {
		t.Error("missing file accepted")
	}
}
