package service

import (
	"fmt"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// HeaderRules change the headers of the requests a route sends and of
// the responses it passes back. Request rules apply once per request,
// before the first try; response rules to the backend's response (not to
// sluice's own error answers, not to a 101). In each direction: Remove,
// then Set (every value replaced), then Add (one more value).
type HeaderRules struct {
	Request  HeaderOps
	Response HeaderOps
	// RewriteLocation rewrites Location, Content-Location and Refresh in
	// responses of a route whose upstream host differs from the client's:
	// an absolute URL naming the upstream host (with any port) is given
	// the client's scheme and host (Apache ProxyPassReverse, nginx
	// proxy_redirect default). Relative URLs are left alone.
	RewriteLocation bool
}

// HeaderOps are the changes in one direction.
type HeaderOps struct {
	Remove []string
	Set    []Field
	Add    []Field
}

// Field is a header name and a value that may hold variables (Vars).
type Field struct {
	Name  string
	Value string
}

// Vars are the variables a header value may hold.
var Vars = []string{"{client_ip}", "{scheme}", "{host}", "{route}", "{request_id}"}

// Empty reports whether the rules change nothing.
func (r HeaderRules) Empty() bool {
	return len(r.Request.Remove)+len(r.Request.Set)+len(r.Request.Add)+
		len(r.Response.Remove)+len(r.Response.Set)+len(r.Response.Add) == 0 && !r.RewriteLocation
}

// Check refuses rules on headers sluice writes itself or that frame the
// message, names that are not tokens, values with control characters,
// and unknown variables.
func (r HeaderRules) Check() error {
	for _, d := range []struct {
		dir string
		ops HeaderOps
	}{{"request", r.Request}, {"response", r.Response}} {
		for _, n := range d.ops.Remove {
			if err := checkRuleName(d.dir, n); err != nil {
				return err
			}
		}
		for _, f := range append(append([]Field(nil), d.ops.Set...), d.ops.Add...) {
			if err := checkRuleName(d.dir, f.Name); err != nil {
				return err
			}
			if err := checkRuleValue(f.Value); err != nil {
				return fmt.Errorf("%s header %s: %w", d.dir, f.Name, err)
			}
		}
	}
	return nil
}

// framing are headers no rule may touch: they frame the message or the
// connection, or sluice writes them itself.
var framing = map[string]string{
	"Host": "set the route's host instead", "Content-Length": "", "Transfer-Encoding": "",
	"Connection": "", "Keep-Alive": "", "Te": "", "Trailer": "", "Upgrade": "",
	"Proxy-Connection": "", "Via": "",
}

// forwarding are request headers sluice writes itself (trusted_proxies).
var forwarding = map[string]bool{
	"X-Forwarded-For": true, "X-Forwarded-Proto": true, "X-Forwarded-Host": true,
	"X-Real-Ip": true, "Forwarded": true,
}

func checkRuleName(dir, n string) error {
	if !httpguts.ValidHeaderFieldName(n) {
		return fmt.Errorf("%s header %q: not a header name", dir, n)
	}
	c := http.CanonicalHeaderKey(n)
	if hint, ok := framing[c]; ok {
		if hint != "" {
			hint = " (" + hint + ")"
		}
		return fmt.Errorf("%s header %s: frames the message or is written by sluice, no rule may change it%s", dir, c, hint)
	}
	if dir == "request" && forwarding[c] {
		return fmt.Errorf("request header %s: written by sluice (see trusted_proxies), no rule may change it", c)
	}
	return nil
}

func checkRuleValue(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return fmt.Errorf("the value has a control character")
		}
	}
	for rest := v; ; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			return nil
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return fmt.Errorf("%q: a { without }", v)
		}
		name := rest[i : i+j+1]
		known := false
		for _, k := range Vars {
			known = known || k == name
		}
		if !known {
			return fmt.Errorf("%q: unknown variable %s (known: %s)", v, name, strings.Join(Vars, ", "))
		}
		rest = rest[i+j+1:]
	}
}
