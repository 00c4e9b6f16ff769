package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// readResponse reads a backend's response header from br: what
// http.ReadResponse(br, req) returns, for every input. The common
// response — HTTP/1.1, a status line and header fields of plain tokens and
// values, a Content-Length or no body, the whole header already in br's
// buffer (one segment from the backend) — is parsed here, with one string
// for the whole header and one slice for its values (net/http's parser
// allocates a string per line and value, a textproto reader and a transfer
// reader per response). Anything else — chunked or close-delimited
// bodies, trailers, HTTP/1.0, obsolete line folding, a duplicated
// Content-Length, a byte net/http might treat otherwise, a header split
// across reads — goes to http.ReadResponse untouched, from the same
// position in br. FuzzResponseParse checks the two against each other.
func readResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	if _, err := br.Peek(1); err != nil {
		// Nothing buffered and the read failed: what ReadResponse's
		// first ReadLine returns.
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if resp := fastResponse(br, req); resp != nil {
		return resp, nil
	}
	return http.ReadResponse(br, req)
}

// parseRequest reads a client's request header from br: what net/http's
// server parser (readRequest, h1.go) returns, for every input. As
// readResponse, the common request — GET-like or with a Content-Length,
// HTTP/1.1 or 1.0, an origin-form target, plain fields, the whole header
// in br's buffer — is parsed here; everything else (chunked bodies,
// CONNECT, PRI, absolute targets, trailers, duplicated or unusual
// Content-Length or Host fields, obs-fold, bytes outside plain text, a
// header split across reads) goes to net/http's parser from the same
// position. FuzzRequestParse checks the two against each other.
func parseRequest(br *bufio.Reader) (*http.Request, error) {
	if _, err := br.Peek(1); err != nil {
		return nil, err // what net/http's first ReadLine returns
	}
	if r := fastRequest(br); r != nil {
		return r, nil
	}
	return readRequest(br)
}

// fastRequest parses the request in br's buffer when it is of the common
// kind (see parseRequest) and consumes its header; nil (nothing consumed)
// otherwise.
func fastRequest(br *bufio.Reader) *http.Request {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return nil
	}
	head := buf[:end+2]
	// The request line: METHOD SP /target SP HTTP/1.x
	nl := bytes.IndexByte(head, '\n')
	if nl < 1 || head[nl-1] != '\r' {
		return nil
	}
	line := head[:nl-1]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 || !plainText(line) {
		return nil
	}
	for _, c := range line[:sp1] {
		if !httpguts.IsTokenRune(rune(c)) {
			return nil
		}
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 1 || line[sp1+1] != '/' {
		return nil
	}
	sp2 += sp1 + 1
	minor := 0
	switch string(line[sp2+1:]) {
	case "HTTP/1.1":
		minor = 1
	case "HTTP/1.0":
	default:
		return nil
	}
	str := string(head)
	method, target := str[:sp1], str[sp1+1:sp2]
	if method == http.MethodConnect || method == "PRI" {
		return nil
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil
	}
	h, ok := parseFields(str, nl+1)
	if !ok || !plainFraming(h) {
		return nil
	}
	hosts := h["Host"]
	if len(hosts) > 1 {
		return nil
	}
	n, _, ok := declaredLength(h)
	if !ok {
		return nil
	}
	r := &http.Request{
		Method:        method,
		URL:           u,
		Proto:         str[sp2+1 : nl-1],
		ProtoMajor:    1,
		ProtoMinor:    minor,
		Header:        h,
		ContentLength: n,
		RequestURI:    target,
		Host:          u.Host,
	}
	if r.Host == "" && len(hosts) == 1 {
		r.Host = hosts[0]
	}
	// As net/http's shouldClose for a request (the field stays).
	conv := h["Connection"]
	r.Close = httpguts.HeaderValuesContainsToken(conv, "close") ||
		minor == 0 && !httpguts.HeaderValuesContainsToken(conv, "keep-alive")
	if n == 0 {
		r.Body = http.NoBody
	} else {
		r.Body = &fixedBody{r: br, n: n, closing: r.Close}
	}
	_, _ = br.Discard(end + 4)
	return r
}

// fastResponse parses the response in br's buffer when it is of the
// common kind (see readResponse) and consumes its header; nil (nothing
// consumed) otherwise.
func fastResponse(br *bufio.Reader, req *http.Request) *http.Response {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return nil
	}
	head := buf[:end+2] // every line with its CRLF
	// The status line: "HTTP/1.1 NNN" and an optional " reason".
	nl := bytes.IndexByte(head, '\n')
	if nl < 13 || head[nl-1] != '\r' {
		return nil
	}
	line := head[:nl-1]
	if string(line[:9]) != "HTTP/1.1 " {
		return nil
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return nil
		}
		code = code*10 + int(c-'0')
	}
	if len(line) > 12 && line[12] != ' ' || !plainText(line[12:]) {
		return nil
	}
	// 101 (a protocol switch), and a body framed otherwise than by a
	// Content-Length, are net/http's to read.
	if code == http.StatusSwitchingProtocols || req == nil || req.Method == http.MethodHead {
		return nil
	}
	// One string for the status line and the fields: every key and value
	// is a substring of it.
	str := string(head)
	h, ok := parseFields(str, nl+1)
	if !ok {
		return nil
	}
	if !plainFraming(h) {
		return nil
	}
	resp := &http.Response{
		Status:     str[9 : nl-1],
		StatusCode: code,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Request:    req,
	}
	// As shouldClose for HTTP/1.1: close when the backend says so, and
	// its Connection field goes.
	if conv, ok := h["Connection"]; ok && httpguts.HeaderValuesContainsToken(conv, "close") {
		resp.Close = true
		delete(h, "Connection")
	}
	resp.Header = h
	noBody := code/100 == 1 || code == http.StatusNoContent || code == http.StatusNotModified
	n, declared, ok := declaredLength(h)
	switch {
	case !ok:
		return nil
	case noBody:
		resp.ContentLength = 0 // ReadResponse: no body, whatever the field says
	case declared:
		resp.ContentLength = n
	default:
		return nil // delimited by the connection's end
	}
	if resp.ContentLength == 0 {
		resp.Body = http.NoBody
	} else {
		resp.Body = &fixedBody{r: br, n: resp.ContentLength, closing: resp.Close}
	}
	_, _ = br.Discard(end + 4)
	return resp
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
)

// maxFastFields is the most header fields the fast paths read; a header
// with more goes to net/http.
const maxFastFields = 100

// parseFields reads the header fields of s from i on, each line with its
// CRLF: keys and values are substrings of s (a key net/http would
// canonicalize is, as it would be), the values of all the keys in one
// slice. False for anything but plain "token: value" lines.
func parseFields(s string, i int) (http.Header, bool) {
	fields := strings.Count(s[i:], "\r\n")
	if fields > maxFastFields {
		return nil, false
	}
	h := make(http.Header, fields)
	vals := make([]string, fields)
	used := 0
	for i < len(s) {
		j := i + indexCRLF(s[i:])
		if j < i {
			return nil, false
		}
		k, v, ok := splitField(s[i:j])
		if !ok {
			return nil, false
		}
		i = j + 2
		if vv, seen := h[k]; seen {
			h[k] = append(vv, v)
			continue
		}
		vals[used] = v
		h[k] = vals[used : used+1 : used+1]
		used++
	}
	return h, true
}

// plainFraming is whether a message with header h is framed plainly (no
// Transfer-Encoding, no Trailer), applying what net/http's parsers do to
// such a header: Pragma: no-cache implies Cache-Control.
func plainFraming(h http.Header) bool {
	if _, ok := h["Transfer-Encoding"]; ok {
		return false
	}
	if _, ok := h["Trailer"]; ok {
		return false
	}
	if hp := h["Pragma"]; len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	return true
}

// declaredLength is a header's Content-Length: n and declared when it has
// one of the plain form, ok false when it has one net/http is to judge
// (more than one field, or a value not of 1 to 18 digits).
func declaredLength(h http.Header) (n int64, declared, ok bool) {
	cl := h["Content-Length"]
	switch len(cl) {
	case 0:
		return 0, false, true
	case 1:
		n, ok = contentLength(cl[0])
		return n, ok, ok
	}
	return 0, false, false
}

// indexCRLF is the index of the first "\r\n" in s, -1 when there is none
// or a lone '\r' or '\n' comes first (net/http reads those otherwise).
func indexCRLF(s string) int {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			if i+1 < len(s) && s[i+1] == '\n' {
				return i
			}
			return -1
		case '\n':
			return -1
		}
	}
	return -1
}

// splitField splits one header line into its canonical key and its value
// without surrounding blanks, as textproto reads it; false for anything
// that is not a plain "token: value" line.
func splitField(line string) (k, v string, ok bool) {
	colon := -1
	for i := 0; i < len(line); i++ {
		c := line[i]
		if c == ':' {
			colon = i
			break
		}
		if !httpguts.IsTokenRune(rune(c)) {
			return "", "", false
		}
	}
	if colon <= 0 {
		return "", "", false
	}
	k, v = line[:colon], line[colon+1:]
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	if !plainText([]byte(v)) { // no copy: the conversion does not escape
		return "", "", false
	}
	if !canonical(k) {
		k = textproto.CanonicalMIMEHeaderKey(k)
	}
	return k, v, true
}

// canonical is whether k (a token) is already in canonical form: an
// upper-case letter first and after every '-', lower-case elsewhere.
func canonical(k string) bool {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

// plainText is whether b holds only visible ASCII, spaces and tabs:
// bytes every parser reads alike (obs-text and controls go to net/http).
func plainText(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// contentLength parses a Content-Length value of 1 to 18 digits, the
// form net/http accepts without question.
func contentLength(v string) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// fixedBody is a request or response body of a known length, read from
// the connection's reader as net/http's body reads one: an early end of the
// stream is io.ErrUnexpectedEOF, the last bytes come with io.EOF, a read
// after Close is http.ErrBodyReadAfterClose, and Close reads what is
// left so the connection can carry the next response.
type fixedBody struct {
	mu      sync.Mutex
	r       *bufio.Reader
	n       int64 // bytes left
	closing bool  // the connection closes after this response: Close does not drain
	sawEOF  bool
	closed  bool
}

func (b *fixedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

func (b *fixedBody) read(p []byte) (int, error) {
	if b.sawEOF || b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	switch {
	case err == io.EOF:
		b.sawEOF = true
		if b.n > 0 {
			err = io.ErrUnexpectedEOF
		}
	case err == nil && b.n == 0:
		b.sawEOF = true
		err = io.EOF
	}
	return n, err
}

func (b *fixedBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var err error
	if !b.sawEOF && b.n > 0 && !b.closing {
		_, err = io.Copy(io.Discard, fixedBodyLocked{b})
	}
	b.closed = true
	return err
}

// fixedBodyLocked reads b with its lock held (Close's drain).
type fixedBodyLocked struct{ b *fixedBody }

func (l fixedBodyLocked) Read(p []byte) (int, error) { return l.b.read(p) }
