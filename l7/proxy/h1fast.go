package proxy

// The HTTP/1.1 response path without header maps: a backend's response
// header parsed by valyala/fasthttp's ResponseHeader (no allocation) and
// written to an HTTP/1.1 client straight from it, where net/http's
// ReadResponse builds a Response, a header map and a string per field
// that respond then copies into the client's header map (issue 11: a
// measured 4.5 µs of the proxy's CPU per kept-alive request, the largest
// single cost of the request path in user space; docs/l7.md "The
// response path").
//
// It is taken only where its reading cannot differ from net/http's: a
// response to a request sent to an HTTP/1.1 backend by sluice's own
// HTTP/1 connection loop, with no response header rules to apply, framed
// by one Content-Length, whose whole header is already in the
// connection's buffer, every line ending in CRLF, no field folded or
// repeated where fasthttp keeps one value (Content-Type,
// Content-Encoding, Server), every name a token and every value valid,
// within upstream.max_header_bytes and max_header_count. Anything else —
// chunked or close-delimited bodies, 1xx, 204, 304, HEAD, upgrades,
// trailers, HTTP/1.0 backends, a header split over reads — is read by
// net/http's ReadResponse as before, from the same bytes (nothing is
// consumed until the fast path is sure). FuzzFastResponse compares the
// two readings on arbitrary headers.

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"unsafe"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http/httpguts"

	"github.com/sluicelb/sluice/l7/service"
)

// fastResponseOK is whether a response to out, answered on w, may be
// read by the fast path: w is the HTTP/1 loop's (it writes the header
// from fasthttp's), no upgrade is asked for, the request is not HEAD, and
// no response header rule or Location rewrite of the service (svc) needs
// a header map.
func fastResponseOK(w http.ResponseWriter, out *outRequest, svc *service.Config) bool {
	if _, ok := w.(*h1Response); !ok || out.upgrade != "" || out.method == http.MethodHead {
		return false
	}
	hr := &svc.Headers
	return len(hr.Response.Remove)+len(hr.Response.Set)+len(hr.Response.Add) == 0 &&
		(!hr.RewriteLocation || svc.Host == service.HostKeep)
}

// fastHead is a backend's response header as fasthttp parsed it, with
// what is needed to read it (pooled: Server.fastHeads).
type fastHead struct {
	h    fasthttp.ResponseHeader
	rd   bytes.Reader
	br   *bufio.Reader
	body clBody
	// resp is the response read (its Body is body): no allocation per
	// response, and released with f like its body.
	resp http.Response
	// kv are the header's fields as fasthttp gives them (slices of its
	// storage), in one pass.
	kv []fastField
	// drop are the fields the response's Connection names (hop-by-hop),
	// canonical.
	drop []string
	// close: a Connection field has the close option.
	close bool
}

// fastHeads pools fastHeads.
var fastHeads = sync.Pool{New: func() any {
	f := &fastHead{br: bufio.NewReaderSize(nil, fastHeadMax)}
	f.h.SetNoDefaultContentType(true)
	return f
}}

// fastHeadMax bounds the response header the fast path reads (a larger
// one is read by net/http's parser).
const fastHeadMax = 4096

// releaseFastHead gives f back to the pool.
func releaseFastHead(f *fastHead) {
	if f == nil {
		return
	}
	f.rd.Reset(nil)
	f.br.Reset(nil)
	f.body = clBody{}
	f.resp = http.Response{}
	clear(f.kv) // fasthttp's storage is reused
	f.kv = f.kv[:0]
	fastHeads.Put(f)
}

// headSpecial marks the bytes headBlock looks at (read only).
var headSpecial = [256]bool{'\r': true, '\n': true, ':': true}

// headBlock is the header at the start of buf through its first empty
// line, within limit bytes, when it has the shape both parsers read
// alike: every line ends in CRLF and a CR or LF is nowhere else (so the
// lines are those both see), and no space or tab comes before a colon (a
// name net/http refuses that fasthttp trims, or a value that has one:
// read by net/http too). lines counts its CRLFs. nil: not such a header,
// or not all of it buffered. One pass over the bytes (six searches did
// it before: a sixth of reading a response in the profile).
func headBlock(buf []byte, limit int) (block []byte, lines int) {
	if len(buf) > limit {
		buf = buf[:limit]
	}
	for i := 0; i < len(buf); i++ {
		c := buf[i]
		if !headSpecial[c] {
			continue // (one load and branch for the common byte)
		}
		switch c {
		case '\r':
			if i+1 == len(buf) || buf[i+1] != '\n' {
				return nil, 0
			}
			lines++
			i++ // the LF
			if i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n' {
				return buf[:i+3], lines + 1
			}
		case '\n':
			return nil, 0
		case ':':
			if i > 0 && (buf[i-1] == ' ' || buf[i-1] == '\t') {
				return nil, 0
			}
		}
	}
	return nil, 0
}

// readFastResponse reads the response header waiting in br when the fast
// path may take it (see the file's comment): the response (Header nil, the
// fields in the fastHead) and its fastHead, or nil and nothing read from
// br. maxBytes and maxCount are upstream.max_header_bytes and
// max_header_count.
func readFastResponse(br *bufio.Reader, out *outRequest, maxBytes, maxCount int) (*http.Response, *fastHead) {
	if !out.fastOK || out.method == http.MethodHead {
		return nil, nil
	}
	if _, err := br.Peek(1); err != nil {
		return nil, nil // net/http's parser reports it
	}
	buf, _ := br.Peek(br.Buffered())
	block, lines := headBlock(buf, min(maxBytes, fastHeadMax))
	if block == nil {
		return nil, nil
	}
	lines -= 2 // the status line and the empty one
	if lines > maxCount || !statusLine(block) {
		return nil, nil
	}
	f := fastHeads.Get().(*fastHead)
	f.h.Reset()
	f.h.SetNoDefaultContentType(true)
	f.rd.Reset(block)
	f.br.Reset(&f.rd)
	if err := f.h.Read(f.br); err != nil || f.br.Buffered() != 0 || f.rd.Len() != 0 {
		// Not parsed, or its header ended before the first empty line
		// (fasthttp reads a bare LF as a line end).
		releaseFastHead(f)
		return nil, nil
	}
	code, cl := f.h.StatusCode(), f.h.ContentLength()
	if d := block[9:12]; code != int(d[0]-'0')*100+int(d[1]-'0')*10+int(d[2]-'0') {
		// (fasthttp reads a status of 0 as 200.)
		releaseFastHead(f)
		return nil, nil
	}
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified || code > 599 ||
		cl < 0 || !f.check(lines) {
		releaseFastHead(f)
		return nil, nil
	}
	_, _ = br.Discard(len(block))
	out.respFor.Method = out.method // as readResponseHeader: resp.Request is it
	f.resp = http.Response{
		// (No Status: nothing reads it, and it would be an allocation.)
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		ContentLength: int64(cl),
		Close:         f.close,
		Request:       &out.respFor,
		Body:          http.NoBody,
	}
	if cl > 0 {
		f.body = clBody{r: br, n: int64(cl)}
		f.resp.Body = &f.body
	}
	return &f.resp, f
}

// statusLine is whether block starts with an HTTP/1.1 status line whose
// code is three digits followed by a space or the line's end (what
// net/http's ReadResponse accepts; fasthttp would read more digits).
func statusLine(block []byte) bool {
	if len(block) < 14 || string(block[:9]) != "HTTP/1.1 " {
		return false
	}
	for _, c := range block[9:12] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return block[12] == ' ' || block[12] == '\r'
}

// check is whether the parsed fields are the header's lines one for one
// (none folded into another, none of the fields fasthttp keeps once
// repeated), each name a token and each value valid, with no Trailer or
// Transfer-Encoding; it gathers the fields Connection names.
func (f *fastHead) check(lines int) bool {
	f.kv, f.drop, f.close = f.kv[:0], f.drop[:0], false
	for k, v := range f.h.All() {
		f.kv = append(f.kv, fastField{k, v})
		if !validName(k) || !validValue(v) {
			return false
		}
		switch string(k) {
		case "Trailer", "Transfer-Encoding":
			return false
		case "Connection":
			// (fasthttp takes a lone close option out of the field and
			// gives it back last: the options are read here, as
			// net/http's shouldClose reads them.)
			for name := range strings.SplitSeq(string(v), ",") {
				if name = textproto.TrimString(name); name != "" {
					f.drop = append(f.drop, textproto.CanonicalMIMEHeaderKey(name))
					f.close = f.close || strings.EqualFold(name, "close")
				}
			}
		}
	}
	if f.close {
		// As net/http's reader, which takes a Connection field with the
		// close option out of the header before respond reads the
		// options (the fields it names are then passed on: the same on
		// both paths; noted in docs/l7.md).
		f.drop = f.drop[:0]
	}
	return len(f.kv) == lines
}

// fastField is a field of a fastHead.
type fastField struct{ k, v []byte }

// validName and validValue are httpguts' checks on fasthttp's bytes.
func validName(k []byte) bool {
	return len(k) > 0 && httpguts.ValidHeaderFieldName(unsafeString(k))
}

func validValue(v []byte) bool { return httpguts.ValidHeaderFieldValue(unsafeString(v)) }

// unsafeString is b as a string without a copy, for a look that keeps
// nothing.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// fields calls fn for each field passed on to the client: not hop-by-hop
// and not named by Connection. It reports whether a Date was among them.
func (f *fastHead) fields(fn func(k, v []byte)) (date bool) {
next:
	for _, kv := range f.kv {
		ks := unsafeString(kv.k)
		switch ks {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
			"Te", "Trailer", "Transfer-Encoding", "Upgrade": // hopByHop
			continue
		case "Date":
			date = true
		}
		for _, name := range f.drop {
			if ks == name {
				continue next
			}
		}
		fn(kv.k, kv.v)
	}
	return date
}

// writeFastHeader writes a response read by the fast path to an HTTP/1.1
// client: as WriteHeader would after respond copied the header into the
// client's map (hop-by-hop fields dropped, Via appended).
func (w *h1Response) writeFastHeader(f *fastHead, code int, cl int64) {
	bw := w.beginHeader(code, cl)
	date := f.fields(func(k, v []byte) {
		_, _ = bw.Write(k)
		_, _ = bw.WriteString(": ")
		_, _ = bw.Write(v)
		_, _ = bw.WriteString("\r\n")
	})
	// Fields the pipeline set before the response (none today but
	// Connection: close, which beginHeader read) stay unless the backend
	// sent the same, as when respond copies its header over them.
	for k, vv := range w.h {
		if k == "Connection" || k == "Transfer-Encoding" || f.h.Peek(k) != nil {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	_, _ = bw.WriteString("Via: 1.1 sluice\r\n")
	w.endHeader(date)
}

// clBody is a response body of a known length read from the backend
// connection: io.EOF at its end, io.ErrUnexpectedEOF when the connection
// ends before (as net/http's body).
type clBody struct {
	r *bufio.Reader
	n int64
}

func (b *clBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	switch {
	case b.n == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// Close implements io.Closer: the connection is the pool's to close or
// keep (respond and discard read the body to its end before keeping it).
func (b *clBody) Close() error { return nil }
