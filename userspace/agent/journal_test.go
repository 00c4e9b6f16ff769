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
