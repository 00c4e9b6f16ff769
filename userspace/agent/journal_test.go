package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/userspace/config"
)

// An http service whose access log goes to stdout is warned of when stdout
// is the systemd journal (which drops lines past its rate limit, the
// agent's own with them); not otherwise, nor for one logging to a file.
func TestWarnJournal(t *testing.T) {
	cfg := &config.Config{Services: []config.Service{
		{Name: "web-http", Protocol: config.ProtocolHTTP, AccessLog: config.AccessLogStdout},
		{Name: "api", Protocol: config.ProtocolHTTP, AccessLog: "/var/log/sluice/access.log"},
		{Name: "quiet", Protocol: config.ProtocolHTTP, AccessLog: config.AccessLogOff},
		{Name: "web", Protocol: "tcp"},
	}}
	for _, journal := range []bool{true, false} {
		var buf bytes.Buffer
		warnJournal(slog.New(slog.NewTextHandler(&buf, nil)), cfg, journal)
		got := buf.String()
		if warned := strings.Contains(got, "access log to the systemd journal"); warned != journal {
			t.Fatalf("journal %v: %q", journal, got)
		}
		if journal && (!strings.Contains(got, "services=[web-http]") || !strings.Contains(got, "/var/log/sluice/access.log")) {
			t.Errorf("warning %q, want it to name web-http only and say where to log", got)
		}
	}
}

// The http services' client limits past the open files limit are warned
// of, with both numbers; within it, or with no http service, not.
func TestWarnFileLimit(t *testing.T) {
	svc := func(conns, reqs int) config.Service {
		return config.Service{Name: "s", Protocol: config.ProtocolHTTP, Client: &config.ClientLimits{MaxConnections: conns, MaxRequests: reqs}}
	}
	for _, c := range []struct {
		name     string
		services []config.Service
		limit    uint64
		warn     string
	}{
		{"defaults under systemd's limit", []config.Service{svc(10000, 1000), svc(10000, 1000)}, 524288, ""},
		{"defaults past ulimit -n 1024", []config.Service{svc(10000, 1000)}, 1024, "sockets_allowed=11256 open_files_limit=1024"},
		{"two services past 20000", []config.Service{svc(10000, 1000), svc(10000, 1000)}, 20000, "sockets_allowed=22256 open_files_limit=20000"},
		{"no http service", []config.Service{{Name: "l4", Protocol: "tcp"}}, 16, ""},
		{"limit unknown", []config.Service{svc(10000, 1000)}, 0, ""},
	} {
		var buf bytes.Buffer
		warnFileLimit(slog.New(slog.NewTextHandler(&buf, nil)), &config.Config{Services: c.services}, c.limit)
		got := buf.String()
		if c.warn == "" && got != "" || c.warn != "" && (!strings.Contains(got, c.warn) || !strings.Contains(got, "LimitNOFILE")) {
			t.Errorf("%s: logged %q, want %q", c.name, got, c.warn)
		}
	}
}
