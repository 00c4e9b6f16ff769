package proxy

import (
	"io"
	"testing"
	"time"
)

// TestWorkersKeepGoroutines: a goroutine that ran a job runs the next one
// (no new goroutine), the idle ones end when idle too long and when the
// pool stops.
func TestWorkersKeepGoroutines(t *testing.T) {
	var p workers
	counts := func(alive, idle int) func() bool {
		return func() bool { a, i := p.counts(); return a == alive && i == idle }
	}
	done := make(chan struct{})
	for range 3 {
		p.Go(func() { done <- struct{}{} })
		<-done
		waitFor(t, "the worker parks", counts(1, 1))
	}

	// Two at once: a second goroutine; both are kept.
	release := make(chan struct{})
	for range 2 {
		p.Go(func() { <-release })
	}
	close(release)
	waitFor(t, "both park", counts(2, 2))

	// The one idle longest ends at the next clean.
	p.mu.Lock()
	p.idle[0].since = time.Now().Add(-2 * workerIdle)
	p.mu.Unlock()
	p.clean()
	waitFor(t, "the old one ends", counts(1, 1))

	p.stop()
	waitFor(t, "all end at stop", counts(0, 0))
	// After stop a job still runs, on a goroutine that then ends.
	p.Go(func() { done <- struct{}{} })
	<-done
	waitFor(t, "the job's goroutine ends", counts(0, 0))
}

// TestH1ConnectionsShareGoroutines: one-request connections one after the
// other are served by one goroutine, kept between them.
func TestH1ConnectionsShareGoroutines(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), nil)
	if h.srv.h1 == nil {
		t.Skip("net/http's server serves HTTP/1 in this configuration")
	}
	for i := range 3 {
		c, br := rawConn(t, h)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
		if resp, _ := readResp(t, br, "GET"); resp.StatusCode != 200 {
			t.Fatalf("connection %d: status %d", i+1, resp.StatusCode)
		}
		waitFor(t, "the connection's goroutine waits for the next", func() bool {
			alive, idle := h.srv.h1.workers.counts()
			return alive == 1 && idle == 1
		})
	}
}
