package announce

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeBIRD answers one `show protocols` on a unix socket with reply.
func fakeBIRD(t *testing.T, reply string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bird.ctl")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("0001 BIRD 2.0.12 ready.\n"))
		buf := make([]byte, 64)
		_, _ = c.Read(buf)
		_, _ = c.Write([]byte(reply))
	}()
	return sock
}

func TestBIRDSessions(t *testing.T) {
	sock := fakeBIRD(t, "2002-Name       Proto      Table      State  Since         Info\n"+
		"1002-device1    Device     ---        up     03:28:56.615  \n"+
		" sluice_kernel Kernel  sluice_vips up     03:28:56.615  \n"+
		" sluice_peer1 BGP        ---        up     03:28:57.101  Established   \n"+
		" sluice_peer2 BGP        ---        start  2026-12-02 03:28:56  Active        Socket: Connection refused\n"+
		"0000 \n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	got, err := BIRDSessions(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (Session{Name: "sluice_peer1", State: "up", Info: "Established"}) || !got[0].Up() ||
		got[1] != (Session{Name: "sluice_peer2", State: "start", Info: "Active Socket: Connection refused"}) || got[1].Up() {
		t.Fatalf("sessions %+v", got)
	}
	if _, err := BIRDSessions(ctx, fakeBIRD(t, "9001 Access denied\n")); err == nil {
		t.Fatal("an error answer was taken for sessions")
	}
	if _, err := BIRDSessions(ctx, filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("no socket, no error")
	}
}

type sessionMetrics struct {
	Metrics
	up map[string]bool
}

func (m *sessionMetrics) SessionUp(s string, up bool) { m.up[s] = up }
func (m *sessionMetrics) ForgetSession(s string)      { delete(m.up, s) }

func TestRefreshSessions(t *testing.T) {
	m := &sessionMetrics{up: map[string]bool{"sluice_peer9": true}}
	sock := fakeBIRD(t, "1002-sluice_peer1 BGP --- up 03:28:57.101 Established\n0000 \n")
	a := New(Options{Routes: NewFake(), BIRDSocket: sock})
	a.metrics = m
	a.sessions = []Session{{Name: "sluice_peer9", State: "up", Info: "Established"}}
	a.RefreshSessions(context.Background())
	st := a.Status()
	if len(st.Sessions) != 1 || !st.Sessions[0].Up() || st.SessionsError != "" || !m.up["sluice_peer1"] || len(m.up) != 1 {
		t.Fatalf("status %+v, metrics %v", st, m.up)
	}
	a.birdSocket = filepath.Join(t.TempDir(), "gone")
	a.RefreshSessions(context.Background())
	if st := a.Status(); len(st.Sessions) != 0 || st.SessionsError == "" || len(m.up) != 0 {
		t.Fatalf("BIRD gone: status %+v, metrics %v", st, m.up)
	}
}
