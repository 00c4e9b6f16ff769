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

// expandVars replaces the variables of a rule's value (service.Vars).
func expandVars(v string, q *request) string {
	if !strings.Contains(v, "{") {
		return v
	}
	return strings.NewReplacer(
		"{client_ip}", q.out.fwd.realIP,
		"{scheme}", q.out.fwd.proto,
		"{host}", q.r.Host,
		"{route}", q.st.route,
	).Replace(v)
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
