package proxy

import (
	"net/http"
	"net/netip"

	"github.com/sluicelb/sluice/l7/reqid"
)

// requestID is the id of request r: the one a trusted peer sent in the
// service's request_id header when the service takes them (and it is a
// valid id), else a new one of the server's source (one atomic add).
func (s *Server) requestID(r *http.Request, st *settings, p peer) reqid.ID {
	if rid := &st.svc.RequestID; rid.TrustIncoming {
		if vv := r.Header[rid.Header]; len(vv) == 1 && p.trusted {
			if id, ok := reqid.Parse(vv[0]); ok {
				return id
			}
		}
	}
	return s.ids.Next()
}

// inPrefixes reports whether ip is in one of list.
func inPrefixes(ip netip.Addr, list []netip.Prefix) bool {
	for _, p := range list {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
