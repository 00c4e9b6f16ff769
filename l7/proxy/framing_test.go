package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestFramingGuard(t *testing.T) {
	const both = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
	const broken = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length  4\r\nTransfer-Encoding: chunked\r\n\r\n"
	chunked := "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"4b\r\n" + both[:75] + "\r\n0\r\nX-Trailer: 1\r\n\r\n"
	tests := []struct {
		name, in, want string
	}{
		{"plain GETs", "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", ""},
		{"ambiguous", both + "0\r\n\r\n", broken + "0\r\n\r\n"},
		{"ambiguous, lower case, LF only", "POST / HTTP/1.1\nhost: x\ntransfer-encoding: chunked\ncontent-length: 2\n\n", "POST / HTTP/1.1\nhost: x\ntransfer-encoding: chunked\ncontent-length  2\n\n"},
		{"smuggled inside a Content-Length body", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 75\r\n\r\n" + both[:75] + "GET / HTTP/1.1\r\n\r\n", ""},
		{"smuggled inside a chunked body", chunked + "GET / HTTP/1.1\r\nHost: x\r\n\r\n", ""},
		{"ambiguous after a chunked body", chunked + both, chunked + broken},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + both, ""},
		{"leading empty lines", "\r\n" + both, "\r\n" + broken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == "" {
				want = tc.in
			}
			for _, step := range []int{1, 7, 4096} {
				a, b := net.Pipe()
				go func() {
					for i := 0; i < len(tc.in); i += step {
						a.Write([]byte(tc.in[i:min(i+step, len(tc.in))]))
					}
					a.Close()
				}()
				fc := &framingConn{Conn: b, max: 64 << 10, bufs: newFramingListener(nil, 0).bufs}
				got, err := io.ReadAll(fc)
				b.Close()
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != want {
					t.Errorf("written %d bytes at a time:\n got %q\nwant %q", step, got, want)
				}
			}
		})
	}
	if !strings.Contains(broken, "Content-Length  4") {
		t.Fatal("test constant")
	}
}

// Keep-alive client connections survive the guard: the server interrupts
// its background read with a deadline, which must not end the connection.
func TestFramingKeepAlive(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, nil)
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 5 {
		io.WriteString(c, "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetDeadline(time.Now().Add(3 * time.Second))
		for j := range 2 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("round %d, response %d: %v", i, j, err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 200 || resp.Close {
				t.Fatalf("round %d, response %d: %d close=%v", i, j, resp.StatusCode, resp.Close)
			}
		}
	}
	if n := be.count.Load(); n != 10 {
		t.Errorf("backend got %d requests, want 10", n)
	}
}

func TestFramingStopsAtUpgrade(t *testing.T) {
	in := "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello, no header end"
	a, b := net.Pipe()
	go func() { a.Write([]byte(in)); a.Close() }()
	fc := &framingConn{Conn: b, max: 64 << 10, bufs: newFramingListener(nil, 0).bufs}
	got, _ := io.ReadAll(fc)
	if string(got) != in {
		t.Errorf("got %q", got)
	}
}
