package proxy

import (
	"net/http"
	"strings"
	"testing"
)

func TestProxyForwardsAndPools(t *testing.T) {
	var seen http.Header
	var host string
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		host = r.Host
		w.Header().Set("Connection", "X-Secret")
		w.Header().Set("X-Secret", "hop")
		w.Header().Set("X-Kept", "yes")
		w.Write([]byte("hello"))
	})
	p := newPool(t, nil, be.addr)
	h := start(t, p, nil)

	hdr := http.Header{"Connection": {"X-Hop"}, "X-Hop": {"1"}, "X-Forwarded-For": {"203.0.113.9"}, "X-Keep": {"1"}}
	resp, body := h.do(t, "GET", "/a?b=c", nil, hdr)
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if seen.Get("X-Hop") != "" || seen.Get("X-Keep") != "1" {
		t.Errorf("hop-by-hop handling to the backend: %v", seen)
	}
	if got := seen.Get("X-Forwarded-For"); got != "203.0.113.9, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q", got)
	}
	if seen.Get("X-Forwarded-Proto") != "http" || seen.Get("X-Forwarded-Host") != strings.TrimPrefix(h.url, "http://") || !strings.Contains(seen.Get("Via"), "sluice") {
		t.Errorf("forwarding headers: %v", seen)
	}
	if host != strings.TrimPrefix(h.url, "http://") {
		t.Errorf("Host = %q, want the client's", host)
	}
	if resp.Header.Get("X-Secret") != "" || resp.Header.Get("X-Kept") != "yes" || !strings.Contains(resp.Header.Get("Via"), "sluice") {
		t.Errorf("response headers: %v", resp.Header)
	}
	for range 5 {
		h.do(t, "GET", "/", nil, nil)
	}
	st := h.srv.UpstreamStats(be.addr)
	if st.Dialled != 1 || st.Reused != 5 || st.Idle != 1 {
		t.Errorf("upstream stats %+v: want 1 dial, 5 reuses, 1 idle", st)
	}
	if l := h.access.last(t); l.Status != 200 || len(l.Try) != 1 || l.Try[0].Backend != be.addr.String() || !l.Try[0].Reused {
		t.Errorf("access log %+v", l)
	}
}
