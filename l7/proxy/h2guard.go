package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
)

// frameGuard sits between an HTTP/2 client connection and the HTTP/2
// server (x/net/http2) and follows the frames both ways without taking
// over the server's work:
//
//   - A request header block that RFC 9113 8.2.2 calls malformed (a
//     connection-specific field: Connection, Proxy-Connection, Keep-Alive,
//     Transfer-Encoding, Upgrade; TE other than "trailers"), which x/net
//     answers with a 400 response, or with an invalid content-length
//     (8.1.1; x/net reads it as 0), gets one more field appended in a
//     CONTINUATION frame: a literal, never indexed, with an upper-case
//     name. The server's HPACK state is untouched by it and the server
//     answers the stream with RST_STREAM PROTOCOL_ERROR, as the RFC says;
//     the request never reaches the handler.
//   - A SETTINGS frame that repeats a parameter (allowed by the RFC: the
//     values apply in order, so the last one counts) is passed on with
//     each known parameter once, at its last value, and unknown ones
//     (ignored by the RFC) dropped: x/net refuses repeats with a
//     connection error.
//   - RST_STREAM frames from the client are counted against the streams it
//     opened: past guardLimits.maxResets, when at least half of the
//     streams were reset, the connection gets GOAWAY ENHANCE_YOUR_CALM
//     and is closed (rapid reset, CVE-2023-44487; Envoy's
//     premature-reset check is the model). So are the server's RST_STREAM
//     frames that answer a client's error on one of its streams
//     (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED,
//     FRAME_SIZE_ERROR: a WINDOW_UPDATE of 0, DATA after the stream's
//     end): a client can make the server reset its streams as cheaply as
//     it resets them itself ("MadeYouReset", CVE-2025-8671). A
//     WINDOW_UPDATE of 0 on one of its streams and DATA on a stream the
//     client ended, reset or skipped (of the last streamWindowSize it
//     opened) are counted as they are read (foreseen); the others as
//     the server writes its resets.
//   - Frames that do no work are bounded (CVE-2019-9518, -9513, -9517:
//     each costs x/net about a microsecond, and a client can send a
//     million a second on one connection). More than maxEmptyFrames
//     frames in a row that carry nothing (DATA without data and without
//     END_STREAM, CONTINUATION without a fragment and without
//     END_HEADERS), or more control frames (PRIORITY, SETTINGS, PING,
//     WINDOW_UPDATE, GOAWAY, unknown types; acknowledgements included)
//     than ctrlAllowed grants for the work the connection did, get
//     GOAWAY ENHANCE_YOUR_CALM and the connection is closed (Envoy's
//     max_inbound_frames_with_empty_payload and its priority and
//     window-update budgets are the model).
//
// The guard decodes the client's header blocks with its own HPACK decoder,
// fed exactly what the server's is; if it ever fails to decode (an
// encoding the server refuses too), it stops looking at header blocks for
// the rest of the connection. Frames larger than the advertised maximum
// and every other frame type pass unread. On the write side it only tracks
// where the server's frames begin, so its own GOAWAY goes between two.
type frameGuard struct {
	net.Conn
	lim guardLimits

	// Read side: used by the server's reading goroutine only.
	buf     []byte // backing store of in
	in      []byte // read from the client, not processed yet
	out     []byte // processed, for the server
	outOff  int
	preface int // bytes of the client preface still to pass on
	pass    int // bytes of a frame payload still to pass on unread
	err     error

	dec       *hpack.Decoder
	blind     bool   // the decoder lost track: header blocks are not inspected
	inBlock   bool   // a header block continues in CONTINUATION frames
	block     uint32 // its stream
	malformed bool   // the block seen so far is malformed
	te        int    // TE fields in the block
	cl        string // the block's content-length value ("" when none yet)

	maxStream       uint32 // highest stream the client opened
	streams, resets int
	// ended tells the client's recent streams it ended or reset from
	// those it may still send on.
	ended streamWindow
	// empty counts the frames in a row that carried nothing, ctrl the
	// control frames (see ctrlAllowed); start is when the connection
	// began.
	empty, ctrl int
	start       time.Time
	// wdata counts the DATA frames the server wrote (the work a
	// client's WINDOW_UPDATE and PING frames answer); written by the
	// write side.
	wdata atomic.Int64
	// made counts the streams of the client the server reset for the
	// client's error, refused those it refused (REFUSED_STREAM: over
	// the concurrency limit, never served); both written by the write
	// side.
	made, refused atomic.Int32
	// foreseen counts the resets the server owes the client for frames
	// the read side saw (a WINDOW_UPDATE of 0 on one of its streams, RFC
	// 9113 6.9; DATA on a stream it ended, reset or skipped, 5.1),
	// counted in made at once, not when the
	// server gets round to writing them, in batches, a few hundred
	// streams later. The write side's resets for a client's error settle
	// them first instead of counting again.
	foreseen atomic.Int32

	// Write side.
	wmu   sync.Mutex
	whdr  [frameHeaderLen]byte
	whave int // bytes of the current frame header written
	wleft int // bytes of the current frame payload still to write
	wdead bool
	// wcode collects the error code of an RST_STREAM the server writes
	// for a stream of the client (wrst: the frame is one).
	wcode [4]byte
	wrst  bool
	// wgoaway is the guard's GOAWAY, waiting for the end of the frame the
	// server is writing.
	wgoaway []byte
}

// guardLimits configure a frameGuard.
type guardLimits struct {
	maxFrame     int // SETTINGS_MAX_FRAME_SIZE advertised to the client
	maxResets    int // see service.HTTP2.MaxResetStreams
	maxHeaderStr int // longest header string decoded (as the server's decoder)
	onAbuse      func(c net.Conn, streams, resets int)
	// onFlood is told of a connection closed for frames that do no work
	// (what: "empty frames" or "control frames"; n of them).
	onFlood     func(c net.Conn, what string, n int)
	onMalformed func() // a request refused (nil: not counted)
}

const (
	frameHeaderLen = 9

	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagAck        = 0x1
	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	errCodeProtocol        = 0x1
	errCodeFlowControl     = 0x3
	errCodeStreamClosed    = 0x5
	errCodeFrameSize       = 0x6
	errCodeRefusedStream   = 0x7
	errCodeEnhanceYourCalm = 0xb

	clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// errCalmed ends the server's reading of a connection closed with GOAWAY
// ENHANCE_YOUR_CALM (rapid reset, frame floods).
var errCalmed = errors.New("http2 connection closed for abuse")

// Bounds on the frames that do no work (see frameGuard).
const (
	// maxEmptyFrames is how many frames that carry nothing may come in a
	// row (Envoy allows 1).
	maxEmptyFrames = 10
	// A connection's control frames are bounded by ctrlBase, ctrlPerStream
	// for each stream it opened, ctrlPerData for each DATA frame it was
	// sent (WINDOW_UPDATE, a BDP-probing PING) and one per second it has
	// been open (keep-alive PINGs).
	ctrlBase      = 100
	ctrlPerStream = 100
	ctrlPerData   = 10
)

// malformedMarker is an HPACK "literal header field never indexed" with a
// new name, "X" (upper case: invalid in HTTP/2) and an empty value.
var malformedMarker = []byte{0x10, 0x01, 'X', 0x00}

// newFrameGuard guards c; sawPreface is whether the client preface was
// read from c already (h2c prior knowledge: net/http reads it).
func newFrameGuard(c net.Conn, lim guardLimits, sawPreface bool) net.Conn {
	g := &frameGuard{Conn: c, lim: lim, start: time.Now()}
	if !sawPreface {
		g.preface = len(clientPreface)
	}
	g.dec = hpack.NewDecoder(4096, g.field)
	g.dec.SetMaxStringLength(lim.maxHeaderStr)
	if tc, ok := c.(*tls.Conn); ok {
		return tlsFrameGuard{g, tc}
	}
	return g
}

// tlsFrameGuard is a frameGuard on TLS: the server sees the TLS state
// (it checks the version and cipher suite HTTP/2 requires).
type tlsFrameGuard struct {
	*frameGuard
	tc *tls.Conn
}

func (t tlsFrameGuard) ConnectionState() tls.ConnectionState { return t.tc.ConnectionState() }

// field looks at one decoded request header field.
func (g *frameGuard) field(f hpack.HeaderField) {
	switch f.Name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		g.malformed = true
	case "te":
		g.te++
		if f.Value != "trailers" || g.te > 1 {
			g.malformed = true
		}
	case "content-length":
		// x/net takes an invalid value for 0 and passes the request on
		// without its body (found by FuzzH2Translation).
		if !validContentLength(f.Value) || g.cl != "" && f.Value != g.cl {
			g.malformed = true
		}
		g.cl = f.Value
	}
}

// validContentLength is whether v is a Content-Length value: 1*DIGIT
// (RFC 9110 8.6), at most 18 digits (an int64).
func validContentLength(v string) bool {
	if v == "" || len(v) > 18 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return false
		}
	}
	return true
}

func (g *frameGuard) Read(p []byte) (int, error) {
	for g.outOff == len(g.out) {
		g.out, g.outOff = g.out[:0], 0
		g.step()
		if len(g.out) > 0 {
			break
		}
		if g.err != nil {
			return 0, g.err
		}
		// A payload (or the preface) passing unread, nothing buffered:
		// straight into p.
		if len(g.in) == 0 && (g.pass > 0 || g.preface > 0) {
			left := &g.pass
			if g.preface > 0 {
				left = &g.preface
			}
			n, err := g.Conn.Read(p[:min(len(p), *left)])
			*left -= n
			if err != nil {
				g.err = err
			}
			if n > 0 || err == nil {
				return n, nil
			}
			return 0, err
		}
		g.fill()
	}
	n := copy(p, g.out[g.outOff:])
	g.outOff += n
	return n, nil
}

// fill reads from the client once more, into in. The buffer grows to hold
// a whole frame only for one the guard inspects (at most maxFrame long):
// any other frame the step waits on needs one byte past its header (a
// padded DATA frame's pad length), and sizing the buffer by a length the
// client wrote would let a 9-byte header cost 16 MiB.
func (g *frameGuard) fill() {
	need := frameHeaderLen
	if len(g.in) >= frameHeaderLen {
		if length := int(g.in[0])<<16 | int(g.in[1])<<8 | int(g.in[2]); length <= g.lim.maxFrame {
			need += length
		}
	}
	if need < 16<<10 {
		need = 16 << 10
	}
	if cap(g.buf) < need {
		g.buf = make([]byte, need)
	}
	// Move what is left to the front of buf.
	n := copy(g.buf[:cap(g.buf)], g.in)
	g.in = g.buf[:n]
	m, err := g.Conn.Read(g.buf[n:cap(g.buf)])
	g.in = g.buf[:n+m]
	if err != nil {
		g.err = err
	}
}

// step processes what in holds, into out: at most stepStreams new
// streams at a time, so the server's resets of the ones before are
// counted before many more are passed on.
func (g *frameGuard) step() {
	streams0 := g.streams
	for g.err == nil || len(g.in) > 0 {
		if g.streams-streams0 >= stepStreams {
			return
		}
		switch {
		case g.preface > 0:
			n := min(g.preface, len(g.in))
			g.emit(n)
			g.preface -= n
			if g.preface > 0 {
				return
			}
			continue
		case g.pass > 0:
			n := min(g.pass, len(g.in))
			g.emit(n)
			g.pass -= n
			if g.pass > 0 {
				return
			}
			continue
		case len(g.in) < frameHeaderLen:
			return
		}
		// Every frame looks: the server's resets are counted as it
		// writes them, behind the frames that caused them.
		if g.made.Load() != 0 && g.tooManyResets() {
			g.abuse()
			return
		}
		h := g.in[:frameHeaderLen]
		length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		typ, flags := h[3], h[4]
		sid := binary.BigEndian.Uint32(h[5:]) & (1<<31 - 1)
		if typ == frameData && flags&flagPadded != 0 && length > 0 && len(g.in) == frameHeaderLen {
			return // the pad length tells whether it carries data
		}
		if g.flooding(typ, flags, length) {
			return
		}
		if g.resetOwed(typ, flags, sid, length) && g.foresee() {
			return
		}
		inspect := length <= g.lim.maxFrame
		switch typ {
		case frameHeaders, frameContinuation, frameSettings, frameRSTStream, frameWindowUpdate:
		default:
			inspect = false
		}
		if !inspect {
			if typ == frameHeaders || typ == frameContinuation {
				// The server fails the connection (too large); stop decoding.
				g.blind = true
			}
			g.emit(frameHeaderLen)
			g.pass = length
			continue
		}
		if len(g.in) < frameHeaderLen+length {
			return
		}
		g.frame(typ, flags, sid, frameHeaderLen+length)
		if g.err == errCalmed {
			return
		}
	}
}

// flooding counts a frame (its header at the start of in) among those
// that do no work; past their bounds it closes the connection (see
// flood) and returns true.
func (g *frameGuard) flooding(typ, flags byte, length int) bool {
	switch typ {
	case frameData, frameContinuation:
		// Carries nothing: no data (or padding only) and not the
		// stream's end; no fragment and not the block's end.
		content, end := length, flags&flagEndHeaders != 0
		if typ == frameData {
			end = flags&flagEndStream != 0
			if flags&flagPadded != 0 && length > 0 {
				content -= 1 + int(g.in[frameHeaderLen])
			}
		}
		if content > 0 || end {
			g.empty = 0
			return false
		}
		g.empty++
		if g.empty > maxEmptyFrames {
			g.flood("empty frames", g.empty)
			return true
		}
	case frameHeaders, frameRSTStream:
		// Streams opened and reset: counted as such.
	default:
		g.ctrl++
		if g.ctrl > ctrlBase+ctrlPerStream*g.streams && g.ctrl > g.ctrlAllowed() {
			g.flood("control frames", g.ctrl)
			return true
		}
	}
	return false
}

// ctrlAllowed is how many control frames the connection may have sent
// for the work it did.
func (g *frameGuard) ctrlAllowed() int {
	return ctrlBase + ctrlPerStream*g.streams + ctrlPerData*int(g.wdata.Load()) + int(time.Since(g.start)/time.Second)
}

// flood closes the connection of a client that sent n frames of what
// doing no work (see calm).
func (g *frameGuard) flood(what string, n int) {
	if g.lim.onFlood != nil {
		g.lim.onFlood(g.Conn, what, n)
	}
	g.calm()
}

// emit passes the first n bytes of in on unchanged.
func (g *frameGuard) emit(n int) {
	g.out = append(g.out, g.in[:n]...)
	g.in = g.in[n:]
}

// frame processes the complete frame at the start of in, n bytes long.
func (g *frameGuard) frame(typ, flags byte, sid uint32, n int) {
	f := g.in[:n]
	payload := f[frameHeaderLen:]
	switch typ {
	case frameRSTStream:
		g.resets++
		g.ended.end(sid)
		if g.tooManyResets() {
			g.abuse()
			return
		}
	case frameWindowUpdate:
		// An increment of 0 on a stream the client opened: the server
		// resets the stream (PROTOCOL_ERROR), the cheapest way to make
		// it reset one ("MadeYouReset"). 0x7fffffff: the reserved bit
		// is ignored.
		if len(payload) == 4 && binary.BigEndian.Uint32(payload)&0x7fffffff == 0 &&
			sid != 0 && sid%2 == 1 && sid <= g.maxStream && g.foresee() {
			return
		}
	case frameSettings:
		if flags&flagAck == 0 && sid == 0 {
			if p, ok := normalizeSettings(payload); ok {
				g.out = appendFrameHeader(g.out, len(p), typ, flags, sid)
				g.out = append(g.out, p...)
				g.in = g.in[n:]
				return
			}
		}
	case frameHeaders:
		if sid > g.maxStream && sid%2 == 1 {
			g.maxStream = sid
			g.streams++
			g.ended.open(sid, flags&flagEndStream != 0)
		} else if flags&flagEndStream != 0 {
			g.ended.end(sid) // trailers
		}
		g.inBlock, g.block, g.malformed, g.te, g.cl = false, sid, false, 0, ""
		if g.blind {
			break
		}
		frag, ok := headerFragment(flags, payload)
		if !ok {
			g.blind = true // the server fails the connection
			break
		}
		g.inBlock = true
		if g.decode(frag, flags) {
			return
		}
	case frameContinuation:
		if g.blind || !g.inBlock || sid != g.block {
			break
		}
		if g.decode(payload, flags) {
			return
		}
	}
	g.emit(n)
}

// decode feeds a header block fragment to the decoder; at the end of the
// block, a malformed one gets the marker. It returns true when it passed
// the frame on itself (changed).
func (g *frameGuard) decode(frag []byte, flags byte) bool {
	if _, err := g.dec.Write(frag); err != nil {
		g.blind, g.inBlock = true, false
		return false
	}
	if flags&flagEndHeaders == 0 {
		return false
	}
	g.inBlock = false
	if err := g.dec.Close(); err != nil {
		g.blind = true
		return false
	}
	if !g.malformed {
		return false
	}
	if g.lim.onMalformed != nil {
		g.lim.onMalformed()
	}
	// The same frame without END_HEADERS, then the marker ending the block.
	n := frameHeaderLen + (int(g.in[0])<<16 | int(g.in[1])<<8 | int(g.in[2]))
	start := len(g.out)
	g.out = append(g.out, g.in[:n]...)
	g.out[start+4] &^= flagEndHeaders
	g.out = appendFrameHeader(g.out, len(malformedMarker), frameContinuation, flagEndHeaders, g.block)
	g.out = append(g.out, malformedMarker...)
	g.in = g.in[n:]
	return true
}

// stepStreams bounds the new streams one step passes on (see step).
const stepStreams = 8

// resetOwed is whether the server answers the frame whose header the
// step reads with a reset of the stream for the client's error, whatever
// state the server keeps (RFC 9113 5.4.2): DATA on a stream the client
// ended (END_STREAM), reset itself or skipped (STREAM_CLOSED, 5.1; x/net
// resets once per such frame, unless a reset of the stream is already
// queued). A DATA frame's END_STREAM is recorded here. A frame too large
// for the server, or on a stream not opened yet, fails the connection
// instead.
func (g *frameGuard) resetOwed(typ, flags byte, sid uint32, length int) bool {
	if typ != frameData || length > g.lim.maxFrame || sid%2 == 0 || sid > g.maxStream {
		return false
	}
	if g.ended.ended(sid) {
		return true
	}
	if flags&flagEndStream != 0 {
		g.ended.end(sid)
	}
	return false
}

// foresee counts a reset the server owes the client as made now (see
// foreseen) and closes the connection when that makes too many; true
// when it did.
func (g *frameGuard) foresee() bool {
	g.foreseen.Add(1)
	g.made.Add(1)
	if g.tooManyResets() {
		g.abuse()
		return true
	}
	return false
}

// tooManyResets is whether the client's streams were reset (by the
// client, or by the server for the client's errors) past
// guardLimits.maxResets, and at least half of those it opened.
func (g *frameGuard) tooManyResets() bool {
	n := g.resets + int(g.made.Load())
	return n > g.lim.maxResets && 2*n >= g.streams-int(g.refused.Load())
}

// abuse closes the connection of a client that resets most of its
// streams (see calm).
func (g *frameGuard) abuse() {
	if g.lim.onAbuse != nil {
		g.lim.onAbuse(g.Conn, g.streams, g.resets+int(g.made.Load()))
	}
	g.calm()
}

// calm closes the connection of an abusive client: GOAWAY
// ENHANCE_YOUR_CALM; then what the client still sends is read and dropped
// for goAwayLinger (closing at once could make the kernel answer the
// unread bytes with a TCP RST, which may destroy the GOAWAY before the
// client reads it), and the server's reading ends.
func (g *frameGuard) calm() {
	g.goAway(errCodeEnhanceYourCalm)
	g.out, g.in = g.out[:0], nil
	until := time.Now().Add(goAwayLinger)
	buf := make([]byte, 16<<10)
	for time.Now().Before(until) {
		_ = g.Conn.SetReadDeadline(until)
		if _, err := g.Conn.Read(buf); err != nil {
			break
		}
	}
	g.err = errCalmed
}

// goAwayLinger is how long a connection closed for abuse is still read
// (and nothing passed on) after its GOAWAY.
const goAwayLinger = time.Second

// goAway writes a GOAWAY of the guard's own between two of the server's
// frames (when the server is in the middle of one, right after it) and
// drops the server's writes after.
func (g *frameGuard) goAway(code uint32) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.wdead || g.wgoaway != nil {
		return
	}
	f := appendFrameHeader(make([]byte, 0, frameHeaderLen+8), 8, frameGoAway, 0, 0)
	f = binary.BigEndian.AppendUint32(f, g.maxStream)
	f = binary.BigEndian.AppendUint32(f, code)
	if g.whave != 0 || g.wleft != 0 {
		g.wgoaway = f // written by Write at the frame's end
		return
	}
	g.writeGoAway(f)
}

// writeGoAway writes f and drops what the server writes from now on.
func (g *frameGuard) writeGoAway(f []byte) {
	g.wdead = true
	_ = g.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = g.Conn.Write(f)
}

func (g *frameGuard) Write(p []byte) (int, error) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.wdead {
		// After the guard's GOAWAY the server's frames are dropped; it
		// is not told, so it does not close the connection before the
		// linger (see abuse).
		return len(p), nil
	}
	q := p
	if g.wgoaway != nil {
		// Only the rest of the frame in progress, then the GOAWAY.
		q = p[:g.frameEnd(p)]
	}
	n, err := g.Conn.Write(q)
	g.track(q[:n])
	if g.wgoaway != nil && err == nil && g.whave == 0 && g.wleft == 0 {
		g.writeGoAway(g.wgoaway)
		return len(p), nil
	}
	return n, err
}

// frameEnd is how many bytes of p finish the frame the server is writing
// (len(p) when p ends before it does).
func (g *frameGuard) frameEnd(p []byte) int {
	if g.wleft > 0 {
		return min(g.wleft, len(p))
	}
	if g.whave == 0 {
		return 0
	}
	var hdr [frameHeaderLen]byte
	copy(hdr[:], g.whdr[:g.whave])
	k := copy(hdr[g.whave:], p)
	if g.whave+k < frameHeaderLen {
		return len(p)
	}
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	return min(k+length, len(p))
}

// track follows the frames in b, written to the client: where each
// begins, and the error code of the server's RST_STREAM frames.
func (g *frameGuard) track(b []byte) {
	for len(b) > 0 {
		if g.wleft > 0 {
			k := min(g.wleft, len(b))
			if g.wrst {
				// RST_STREAM's payload is its 4-byte error code.
				if off := 4 - g.wleft; off >= 0 && off < 4 {
					copy(g.wcode[off:], b[:k])
				}
			}
			g.wleft -= k
			b = b[k:]
			if g.wleft == 0 && g.wrst {
				g.serverReset(binary.BigEndian.Uint32(g.wcode[:]))
			}
			continue
		}
		k := copy(g.whdr[g.whave:], b)
		g.whave += k
		b = b[k:]
		if g.whave == frameHeaderLen {
			g.whave = 0
			g.wleft = int(g.whdr[0])<<16 | int(g.whdr[1])<<8 | int(g.whdr[2])
			sid := binary.BigEndian.Uint32(g.whdr[5:]) & (1<<31 - 1)
			g.wrst = g.whdr[3] == frameRSTStream && g.wleft == 4 && sid%2 == 1
			if g.whdr[3] == frameData {
				g.wdata.Add(1)
			}
		}
	}
}

// serverReset counts an RST_STREAM the server wrote for a stream of the
// client with code: those answering the client's own errors on the stream
// (RFC 9113 5.4.2) count as resets of the client's (see tooManyResets);
// a REFUSED_STREAM (over the concurrency limit) is a stream never served,
// not counted as opened; NO_ERROR (a response sent before the request's
// end), INTERNAL_ERROR and CANCEL are the server's decisions.
func (g *frameGuard) serverReset(code uint32) {
	switch code {
	case errCodeProtocol, errCodeStreamClosed, errCodeFlowControl, errCodeFrameSize:
		// Counted already when foreseen. Only this side takes from
		// foreseen: a load then an add do not race.
		if g.foreseen.Load() > 0 {
			g.foreseen.Add(-1)
			return
		}
		g.made.Add(1)
	case errCodeRefusedStream:
		g.refused.Add(1)
	}
}

func appendFrameHeader(b []byte, length int, typ, flags byte, sid uint32) []byte {
	b = append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(b, sid)
}

// headerFragment is the header block fragment of a HEADERS frame's
// payload (without padding and priority); false when the lengths do not
// add up.
func headerFragment(flags byte, p []byte) ([]byte, bool) {
	pad := 0
	if flags&flagPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad = int(p[0])
		p = p[1:]
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// Known SETTINGS parameters (RFC 9113 6.5.2, RFC 8441, RFC 9218) and
// whether a value is valid for them.
func settingValid(id uint16, v uint32) bool {
	switch id {
	case 2, 8, 9: // ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL, NO_RFC7540_PRIORITIES
		return v <= 1
	case 4: // INITIAL_WINDOW_SIZE
		return v <= 1<<31-1
	case 5: // MAX_FRAME_SIZE
		return v >= 1<<14 && v <= 1<<24-1
	}
	return true
}

const maxKnownSetting = 9

// normalizeSettings returns a SETTINGS payload that repeats no parameter:
// each known one once, at its last value (RFC 9113 6.5.3: they apply in
// order), unknown ones dropped (6.5.2: ignored). ok is false when p needs
// no change, or has a length or a value the server must refuse itself.
func normalizeSettings(p []byte) ([]byte, bool) {
	if len(p)%6 != 0 || len(p) < 12 {
		return nil, false
	}
	var last [maxKnownSetting + 1]int // index+1 of the last occurrence
	change := false
	for i := 0; i < len(p); i += 6 {
		id := binary.BigEndian.Uint16(p[i:])
		v := binary.BigEndian.Uint32(p[i+2:])
		if !settingValid(id, v) {
			return nil, false
		}
		if id == 0 || id > maxKnownSetting {
			change = true
			continue
		}
		if last[id] != 0 {
			change = true
		}
		last[id] = i + 1
	}
	if !change {
		return nil, false
	}
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i += 6 {
		id := binary.BigEndian.Uint16(p[i:])
		if id != 0 && id <= maxKnownSetting && last[id] == i+1 {
			out = append(out, p[i:i+6]...)
		}
	}
	return out, true
}

// streamWindow remembers which of the client's last streamWindowSize
// streams it ended (END_STREAM) or reset (RST_STREAM), one bit each: what
// the guard needs to foresee the server's reset of a DATA frame sent on
// one (resetOwed). Older streams are not known; a stream the client
// skipped (it opened a higher one first) is closed (RFC 9113 5.1.1).
type streamWindow struct {
	live [streamWindowSize / 64]uint64 // 1: opened and not ended
	top  uint32                        // index of the highest stream opened, plus 1 (0: none)
}

// streamWindowSize is how many of its latest streams a client is
// remembered for (a bit each).
const streamWindowSize = 1024

// streamIndex is a client stream's (odd id) place in the order of the
// client's stream ids.
func streamIndex(id uint32) uint32 { return (id - 1) / 2 }

// open records the client's new stream id, higher than every one before;
// ended: its HEADERS ended it.
func (w *streamWindow) open(id uint32, ended bool) {
	i := streamIndex(id)
	if i < w.top {
		return
	}
	// The streams skipped are closed; those of them within the window
	// now ending at i enter it with i.
	j := w.top
	if i >= streamWindowSize {
		j = max(j, i-streamWindowSize+1)
	}
	for ; j < i; j++ {
		w.set(j, false)
	}
	w.set(i, !ended)
	w.top = i + 1
}

// end records that the client ended or reset stream id.
func (w *streamWindow) end(id uint32) {
	if id%2 == 1 && w.known(streamIndex(id)) {
		w.set(streamIndex(id), false)
	}
}

// ended is whether the client ended or reset stream id (false when the
// stream is not known: not opened yet, or older than the window).
func (w *streamWindow) ended(id uint32) bool {
	i := streamIndex(id)
	return id%2 == 1 && w.known(i) && w.live[i%streamWindowSize/64]&(1<<(i%64)) == 0
}

func (w *streamWindow) known(i uint32) bool { return i < w.top && w.top-i <= streamWindowSize }

func (w *streamWindow) set(i uint32, live bool) {
	word, bit := i%streamWindowSize/64, uint64(1)<<(i%64)
	if live {
		w.live[word] |= bit
	} else {
		w.live[word] &^= bit
	}
}
