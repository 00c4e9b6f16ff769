package retry

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func policy(t *testing.T, mod func(*Config)) *Policy {
	t.Helper()
	r := &Config{
		Attempts: 3, On: DefaultOn(), Methods: DefaultMethods(),
		IdempotencyHeader: "Idempotency-Key", BudgetPercent: 20, BufferBytes: 64 << 10,
		BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond,
	}
	if mod != nil {
		mod(r)
	}
	p, err := NewPolicy(r)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDecide(t *testing.T) {
	idem := http.Header{"Idempotency-Key": {"k"}}
	req := func(m string, h http.Header) Request {
		return Request{Method: m, Header: h, Replayable: true, Tries: 1, DeadlineLeft: true}
	}
	sent := func(k Kind, code int) Outcome { return Outcome{Kind: k, StatusCode: code, Sent: true} }
	tests := []struct {
		name  string
		mod   func(*Config)
		r     Request
		o     Outcome
		retry bool
		why   string
	}{
		{"success", nil, req("GET", nil), sent(OK, 200), false, "success"},
		{"GET 503", nil, req("GET", nil), sent(Status, 503), true, "GET is in retry.methods"},
		{"500 not listed", nil, req("GET", nil), sent(OK, 500), false, "status 500 is not in retry.on"},
		{"POST reset after sending", nil, req("POST", nil), sent(Reset, 0), false, "POST is not in retry.methods"},
		{"POST connect failure", nil, req("POST", nil), Outcome{Kind: ConnectFailure}, true, "before the request was sent"},
		{"POST with idempotency header", nil, req("POST", idem), sent(Reset, 0), true, "carries Idempotency-Key"},
		{"POST non_idempotent", func(r *Config) { r.NonIdempotent = true }, req("POST", nil), sent(Timeout, 0), true, "non_idempotent"},
		{"PUT excluded", func(r *Config) { r.Methods = []string{"GET"} }, req("PUT", nil), sent(Status, 503), false, "PUT is not in retry.methods"},
		{"timeout not listed", func(r *Config) { r.On = []string{"503"} }, req("GET", nil), sent(Timeout, 0), false, "timeout is not in retry.on"},
		{"attempts exhausted", nil, Request{Method: "GET", Replayable: true, Tries: 3, DeadlineLeft: true}, sent(Reset, 0), false, "attempts exhausted"},
		{"deadline", nil, Request{Method: "GET", Replayable: true, Tries: 1}, sent(Reset, 0), false, "total deadline"},
		{"response started", nil, Request{Method: "GET", Replayable: true, Tries: 1, DeadlineLeft: true, ResponseStarted: true}, sent(Reset, 0), false, "response already started"},
		{"large body sent", nil, Request{Method: "PUT", Tries: 1, DeadlineLeft: true}, sent(Status, 503), false, "larger than retry.buffer_bytes"},
		{"large body, nothing sent, still whole", nil, Request{Method: "PUT", Replayable: true, Tries: 1, DeadlineLeft: true}, Outcome{Kind: ConnectFailure}, true, "before the request was sent"},
		{"large body partly read", nil, Request{Method: "PUT", Tries: 1, DeadlineLeft: true}, Outcome{Kind: ConnectFailure}, false, "cannot replay"},
		{"no retry block", func(r *Config) { r.Attempts = 1 }, req("GET", nil), sent(Status, 503), false, "attempts exhausted (1)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := policy(t, tc.mod).Decide(tc.r, tc.o)
			if d.Retry != tc.retry || !strings.Contains(d.Reason, tc.why) {
				t.Errorf("got %v %q, want %v and a reason with %q", d.Retry, d.Reason, tc.retry, tc.why)
			}
		})
	}
}

func TestParseCondition(t *testing.T) {
	for _, s := range []string{"connect-failure", "reset", "timeout", "429", "503"} {
		c, err := ParseCondition(s)
		if err != nil || c.String() != s {
			t.Errorf("%s: %v %v", s, c, err)
		}
	}
	for _, s := range []string{"", "5xx", "99", "600", "Reset"} {
		if _, err := ParseCondition(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if _, err := NewPolicy(&Config{Attempts: 0}); err == nil {
		t.Error("attempts 0 accepted")
	}
	if p, err := NewPolicy(nil); err != nil || p.Attempts() != 1 {
		t.Errorf("nil retry: %v %v", p, err)
	}
}

func TestBackoff(t *testing.T) {
	p := policy(t, nil)
	b := p.Backoff()
	want := []time.Duration{25, 50, 100, 200, 250, 250}
	for i, w := range want {
		if c := b.Ceiling(i + 1); c != w*time.Millisecond {
			t.Errorf("ceiling before retry %d: %s, want %s", i+1, c, w*time.Millisecond)
		}
	}
	var sum time.Duration
	for range 2000 {
		d := b.Delay(3, nil)
		if d < 0 || d > 100*time.Millisecond {
			t.Fatalf("delay %s outside [0, 100ms]", d)
		}
		sum += d
	}
	// Full jitter: the mean is half the ceiling.
	if mean := sum / 2000; mean < 40*time.Millisecond || mean > 60*time.Millisecond {
		t.Errorf("mean delay %s, want about 50ms", mean)
	}
}

func TestBudget(t *testing.T) {
	b := NewBudget(20, 3)
	// A lone request can retry (the minimum).
	end := b.Begin()
	r, ok := b.Acquire()
	if !ok {
		t.Fatal("a single request could not retry")
	}
	r()
	end()
	// 50 active requests: 10 concurrent retries, not 11.
	var ends []func()
	for range 50 {
		ends = append(ends, b.Begin())
	}
	var rels []func()
	for range 10 {
		rel, ok := b.Acquire()
		if !ok {
			t.Fatal("retry refused within the budget")
		}
		rels = append(rels, rel)
	}
	if _, ok := b.Acquire(); ok {
		t.Error("an 11th concurrent retry was allowed with 50 active at 20%")
	}
	rels[0]()
	rels[0]() // idempotent
	if _, ok := b.Acquire(); !ok {
		t.Error("a released retry was not given back")
	}
	st := b.Stats()
	if st.Active != 50 || st.Retrying != 10 || st.Peak != 10 || st.Denied != 1 || st.Limit != 10 {
		t.Errorf("stats %+v", st)
	}
	var wg sync.WaitGroup
	for _, e := range ends {
		wg.Go(e)
	}
	wg.Wait()
	if b.Stats().Active != 0 {
		t.Error("active requests not ended")
	}
}

func TestGRPCConditions(t *testing.T) {
	c, err := ParseCondition("grpc-unavailable")
	if err != nil || c.String() != "grpc-unavailable" {
		t.Fatalf("grpc-unavailable: %v %v", c, err)
	}
	for _, bad := range []string{"grpc-ok", "grpc-", "grpc-14", "grpc-UNAVAILABLE", "grpc-nope"} {
		if _, err := ParseCondition(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if ParseGRPCStatus("14") != 14 || ParseGRPCStatus("014") != -1 || ParseGRPCStatus("17") != -1 || ParseGRPCStatus("") != -1 {
		t.Error("ParseGRPCStatus")
	}
	p, err := NewPolicy(&Config{Attempts: 3, On: []string{"grpc-unavailable"}, Methods: []string{"GET", "/pkg.Echo/Say", "/pkg.Other/*"}})
	if err != nil {
		t.Fatal(err)
	}
	unavailable := Outcome{Kind: Status, StatusCode: 200, GRPC: 14, Sent: true}
	if !p.FailureGRPC(200, 14) || p.FailureGRPC(200, 13) || p.FailureStatus(200) {
		t.Fatal("FailureGRPC/FailureStatus")
	}
	req := func(m string) Request {
		return Request{Method: "POST", GRPCMethod: m, Replayable: true, Tries: 1, DeadlineLeft: true}
	}
	for _, tc := range []struct {
		method string
		want   bool
	}{
		{"/pkg.Echo/Say", true},
		{"/pkg.Echo/Stream", false},
		{"/pkg.Other/Any", true},
		{"/pkg.Other/a/b", false},
		{"/pkg.OtherX/Any", false},
	} {
		if d := p.Decide(req(tc.method), unavailable); d.Retry != tc.want {
			t.Errorf("%s: retry %v (%s), want %v", tc.method, d.Retry, d.Reason, tc.want)
		}
	}
	// Not sent: any gRPC method may go again.
	if d := p.Decide(req("/pkg.Echo/Stream"), Outcome{Kind: ConnectFailure}); d.Retry {
		t.Errorf("connect-failure is not in this retry.on, yet retried: %s", d.Reason)
	}
	// Another code, or one in the trailer (Kind OK): not retried.
	if d := p.Decide(req("/pkg.Echo/Say"), Outcome{Kind: OK, StatusCode: 200, GRPC: 13, Sent: true}); d.Retry || !strings.Contains(d.Reason, "grpc-status 13 (internal) is not in retry.on") {
		t.Errorf("grpc-status 13: %+v", d)
	}
	if d := p.Decide(req("/pkg.Echo/Say"), Outcome{Kind: Status, StatusCode: 200, GRPC: 14, Sent: true}); !strings.Contains(d.Reason, "grpc-status 14 (unavailable)") {
		t.Errorf("reason %q", d.Reason)
	}
	for _, bad := range []string{"/pkg.Echo", "/pkg.Echo/", "//Say", "/a/b/c", "/pkg.Echo/Sa*", "/pkg Echo/Say"} {
		if err := CheckMethod(bad); err == nil {
			t.Errorf("method %q accepted", bad)
		}
	}
}
