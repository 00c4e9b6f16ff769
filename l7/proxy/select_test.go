package proxy

import (
	"net/http"
	"sync/atomic"
	"testing"
)

// thenSelector is first's choice until switched, then then's.
type thenSelector struct {
	first, then Selector
	switched    *atomic.Bool
}

func (s thenSelector) Select(cands []Candidate) int {
	if s.switched.Load() {
		return s.then.Select(cands)
	}
	return s.first.Select(cands)
}

// TestLeastRequestsAvoidsTheBusyAddress: with the default selector, the
// pool's two addresses are both drawn and the one with fewer requests in
// flight is chosen — so while three requests hang at one backend, every
// new one goes to the other. The in-flight counts are read from the
// pool's shared snapshot (backendStats), through the same addrStat the
// tries count on.
func TestLeastRequestsAvoidsTheBusyAddress(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	held := make(chan struct{}, 8)
	slow := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			held <- struct{}{}
			<-release
		}
		w.Write([]byte("slow"))
	})
	fast := newBackend(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("fast")) })
	switched := new(atomic.Bool)
	h := start(t, newPool(t, nil, slow.addr, fast.addr), func(o *Options) {
		// The holds reach the slow backend whatever the draw.
		o.Selector = thenSelector{preferSelector{slow.addr}, LeastRequests{}, switched}
	})
	for range 3 {
		go h.client.Get(h.url + "/hold")
		<-held
	}
	switched.Store(true)
	for i := range 20 {
		if _, body := h.do(t, "GET", "/", nil, nil); body != "fast" {
			t.Fatalf("request %d went to the backend with 3 in flight", i)
		}
	}
}
