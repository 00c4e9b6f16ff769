// Package sdnotify tells systemd how the agent is doing, for a unit of
// Type=notify: READY=1 once it serves, WATCHDOG=1 while its control loop
// turns (a unit's WatchdogSec restarts an agent whose loop hangs), and
// STOPPING=1 when it stops. The protocol (sd_notify(3)) is one datagram
// per message to the unix socket $NOTIFY_SOCKET names; without that
// variable (the agent run by hand, in a container) nothing is sent.
package sdnotify

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Notifier sends state changes to the service manager. A nil *Notifier
// sends nothing.
type Notifier struct {
	conn     *net.UnixConn
	watchdog time.Duration
}

// FromEnv returns the notifier of the socket the environment (getenv)
// names, or nil when it names none. pid is the process's own: a watchdog
// (WATCHDOG_USEC) whose WATCHDOG_PID names another process is not this
// one's.
func FromEnv(getenv func(string) string, pid int) (*Notifier, error) {
	addr := getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil, nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: want a socket path or an abstract name (@…)", addr)
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:] // the abstract namespace
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	n := &Notifier{conn: conn}
	if us := getenv("WATCHDOG_USEC"); us != "" {
		v, err := strconv.ParseUint(us, 10, 63)
		if err != nil || v == 0 {
			conn.Close()
			return nil, fmt.Errorf("WATCHDOG_USEC %q: want a positive number of microseconds", us)
		}
		if p := getenv("WATCHDOG_PID"); p == "" || p == strconv.Itoa(pid) {
			n.watchdog = time.Duration(v) * time.Microsecond
		}
	}
	return n, nil
}

// Notify sends state: newline-separated KEY=VALUE assignments
// ("READY=1", "STATUS=serving 3 services"). It never blocks for long (a
// datagram); on a nil Notifier it does nothing.
func (n *Notifier) Notify(state string) error {
	if n == nil {
		return nil
	}
	_ = n.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := n.conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	return nil
}

// Watchdog is the interval within which the service manager wants
// WATCHDOG=1 (0: no watchdog asked, or a nil Notifier). Send it at about
// half that interval.
func (n *Notifier) Watchdog() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Close closes the socket.
func (n *Notifier) Close() error {
	if n == nil {
		return nil
	}
	return n.conn.Close()
}
