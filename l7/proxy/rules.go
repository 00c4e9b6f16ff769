package proxy

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/sluicelb/sluice/l7/service"
)

// applyRules applies one direction's header rules to h: remove, set, add.
func applyRules(h http.Header, ops *service.HeaderOps, q *request) {
	for _, n := range ops.Remove {
		h.Del(n)
	}
	for _, f := range ops.Set {
		h.Set(f.Name, expandVars(f.Value, q))
	}
	for _, f := range ops.Add {
		h.Add(f.Name, expandVars(f.Value, q))
	}
}

// expandVars replaces the variables of a rule's value (service.Vars,
// checked when the rules were compiled): one allocation, the result.
func expandVars(v string, q *request) string {
	i := strings.IndexByte(v, '{')
	if i < 0 {
		return v
	}
	var b strings.Builder
	b.Grow(len(v) + 40)
	for i >= 0 {
		b.WriteString(v[:i])
		v = v[i:]
		j := strings.IndexByte(v, '}')
		if j < 0 {
			break
		}
		switch name := v[:j+1]; name {
		case "{client_ip}":
			b.WriteString(q.out.fwd.realIP)
		case "{scheme}":
			b.WriteString(q.out.fwd.proto)
		case "{host}":
			b.WriteString(q.r.Host)
		case "{route}":
			b.WriteString(q.st.route)
		case "{request_id}":
			var id [64]byte
			b.Write(q.rec.RequestID.AppendTo(id[:0]))
		default:
			b.WriteString(name)
		}
		v = v[j+1:]
		i = strings.IndexByte(v, '{')
	}
	b.WriteString(v)
	return b.String()
}

// rewriteLocations points Location, Content-Location and Refresh URLs
// naming the upstream host back at the client's scheme and host.
func rewriteLocations(h http.Header, upstreamHost, scheme, clientHost string) {
	up := strings.ToLower(hostname(upstreamHost))
	if up == "" || clientHost == "" {
		return
	}
	fix := func(raw string) (string, bool) {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Host == "" || strings.ToLower(u.Hostname()) != up {
			return raw, false
		}
		u.Scheme, u.Host = scheme, clientHost
		return u.String(), true
	}
	for _, k := range []string{"Location", "Content-Location"} {
		if vv := h[k]; len(vv) == 1 {
			if v, ok := fix(vv[0]); ok {
				h[k] = []string{v}
			}
		}
	}
	if vv := h["Refresh"]; len(vv) == 1 {
		// "5; url=https://backend/next"
		low := strings.ToLower(vv[0])
		if i := strings.Index(low, "url="); i >= 0 {
			if v, ok := fix(vv[0][i+4:]); ok {
				h["Refresh"] = []string{vv[0][:i+4] + v}
			}
		}
	}
}
