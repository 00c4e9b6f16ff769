package relisten

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// listen listens on a loopback port of its own, over plain TCP: Go listens
// with MPTCP by default where the kernel has it, and SOCK_DESTROY does not
// take MPTCP listeners (ss -K cannot close those).
func listen(t *testing.T) (net.Listener, net.ListenConfig) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// On a port of its own choosing, as a server's (New leaves a
	// listener on port 0 alone).
	addr := l.Addr().String()
	l.Close()
	if l, err = lc.Listen(context.Background(), "tcp", addr); err != nil {
		t.Fatal(err)
	}
	return l, lc
}

// destroy closes the listening socket on 127.0.0.1:port in the kernel
// (SOCK_DESTROY) as `ss -K` does.
func destroy(t *testing.T, port int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: ss -K (SOCK_DESTROY) needs CAP_NET_ADMIN")
	}
	out, err := exec.Command("ss", "-K", "-t", "-n", "state", "listening", "src", "127.0.0.1:"+strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("ss -K: %v: %s", err, out)
	}
}

// echo accepts on l, answering each connection's first line with itself.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil {
				_, _ = c.Write([]byte(line))
			}
		}()
	}
}

// roundTrip sends a line on a new connection to addr and reads it back.
func roundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}

// A listener closed under its server by ss -K is replaced by a new socket
// on the same address at its next accept: connections are accepted and
// carry data again.
func TestAcceptListensAgain(t *testing.T) {
	tl, lc := listen(t)
	var revived atomic.Int32
	l := New(tl, lc, func(error) { revived.Add(1) })
	defer l.Close()
	go echo(l)
	addr := tl.Addr().String()
	if err := roundTrip(addr); err != nil {
		t.Fatalf("before ss -K: %v", err)
	}
	destroy(t, tl.Addr().(*net.TCPAddr).Port)
	deadline := time.Now().Add(5 * time.Second)
	for revived.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if revived.Load() != 1 {
		t.Fatalf("listened again %d times, want 1", revived.Load())
	}
	for i := range 3 {
		if err := roundTrip(addr); err != nil {
			t.Fatalf("connection %d after ss -K: %v", i, err)
		}
	}
	if got := l.Addr().String(); got != addr {
		t.Errorf("listening on %s, want %s", got, addr)
	}
	// Closed for good by its owner: Accept ends.
	l.Close()
	if err := roundTrip(addr); err == nil {
		t.Error("a closed listener still accepts")
	}
}

// Without it, the server is down for good: the accept fails with EINVAL
// and connections are refused (what the test above guards against).
func TestDestroyedListenerIsDead(t *testing.T) {
	tl, _ := listen(t)
	defer tl.Close()
	errc := make(chan error, 1)
	go func() { _, err := tl.Accept(); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	destroy(t, tl.Addr().(*net.TCPAddr).Port)
	select {
	case err := <-errc:
		if !Dead(err) {
			t.Fatalf("accept after ss -K: %v, want EINVAL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("accept did not fail after ss -K")
	}
	if err := roundTrip(tl.Addr().String()); err == nil {
		t.Fatal("a connection to a destroyed listener was not refused")
	}
}
