package announce

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Session is one BGP session of the node's BIRD, as `birdc show protocols`
// shows it.
type Session struct {
	Name  string // the protocol's name (sluice_peer1, ...)
	State string // up, start, down, ...
	Info  string // Established, Active, Connect, ... and BIRD's error, if any
}

// Up says whether the session is established.
func (s Session) Up() bool { return s.State == "up" && strings.HasPrefix(s.Info, "Established") }

// maxBIRDReply bounds what is read from BIRD's control socket.
const maxBIRDReply = 1 << 20

// BIRDSessions asks BIRD, on its control socket, for its BGP sessions
// (`show protocols`). BIRD answers in numbered lines: "0001" greets, rows
// of the table come as "1002-" and continuation lines starting with a
// space, "0000" ends the answer, codes 8xxx and 9xxx are errors.
func BIRDSessions(ctx context.Context, socket string) ([]Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("bird control socket: %w", err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("bird control socket: %w", err)
	}
	r := bufio.NewReader(&limitedReader{r: conn, n: maxBIRDReply})
	greeting, err := r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("bird control socket: %w", err)
	}
	if !strings.HasPrefix(greeting, "0001") {
		return nil, fmt.Errorf("bird control socket: unexpected greeting %q", strings.TrimSpace(greeting))
	}
	if _, err := conn.Write([]byte("show protocols\n")); err != nil {
		return nil, fmt.Errorf("bird control socket: %w", err)
	}
	var out []Session
	code := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("bird control socket: %w", err)
		}
		line = strings.TrimRight(line, "\n")
		row := line
		if len(line) >= 5 && line[0] != ' ' {
			code, row = line[:4], line[5:]
			if code == "0000" {
				return out, nil
			}
			if code[0] == '8' || code[0] == '9' {
				return nil, fmt.Errorf("bird: %s", row)
			}
		} else {
			row = strings.TrimPrefix(row, " ")
		}
		if code != "1002" {
			continue
		}
		if s, ok := parseProtocol(row); ok {
			out = append(out, s)
		}
	}
}

// parseProtocol reads one row of `show protocols`: name, protocol, table,
// state, since (a time, or a date and a time), info.
func parseProtocol(row string) (Session, bool) {
	f := strings.Fields(row)
	if len(f) < 5 || f[1] != "BGP" {
		return Session{}, false
	}
	rest := f[5:]
	if strings.Count(f[4], "-") == 2 && len(rest) > 0 && strings.Contains(rest[0], ":") {
		rest = rest[1:] // since is a date and a time
	}
	return Session{Name: f[0], State: f[3], Info: strings.Join(rest, " ")}, true
}

type limitedReader struct {
	r net.Conn
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("answer too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}
