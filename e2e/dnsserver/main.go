// Command dnsserver is the lab's authoritative DNS server: it answers from
// a records file that tests rewrite to switch answers, and can be told to
// misbehave per name (SERVFAIL, NXDOMAIN, empty answers, garbage, silence,
// truncation) to exercise sluice's DNS failure handling.
//
// Records file, one entry a line ('#' starts a comment):
//
//	backend.lab. 2 A 198.18.2.11          any RR in zone-file syntax (TTL required)
//	backend.lab. 2 A 198.18.2.12          several A lines per name are fine
//	alias.lab.   5 CNAME backend.lab.     CNAMEs inside the file are followed
//	backend.lab. mode servfail            servfail | refused | nxdomain | empty |
//	                                      garbage | drop | truncate | normal
//
// Names not in the file get NXDOMAIN. The file is re-read on SIGHUP and
// whenever its mtime, size or inode changes (polled every --poll). A file
// that does not parse is refused and the previous records keep serving.
// Replace the file by rename (write a temp file, mv it over) so the poll
// never sees it half written.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "dnsserver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fs := flag.NewFlagSet("dnsserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "0.0.0.0:53", "address to serve on, UDP and TCP")
	records := fs.String("records", "", "records file (required)")
	poll := fs.Duration("poll", 100*time.Millisecond, "how often the records file is checked for changes")
	negTTL := fs.Uint("neg-ttl", 1, "TTL and minimum of the SOA sent with NXDOMAIN and empty answers")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *records == "" {
		return errors.New("--records is required")
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	pc, l, err := listenBoth(*listen)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	}()
	srv, err := newServer(*records, uint32(*negTTL), log)
	if err != nil {
		pc.Close()
		l.Close()
		return err
	}
	log.Info("listening", "udp", pc.LocalAddr().String(), "tcp", l.Addr().String(), "records", *records)
	return srv.serve(ctx, pc, l, *poll, reload)
}

// listenBoth binds UDP and TCP on the same address; with port 0 the TCP
// socket takes the port the UDP socket got.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	// With port 0 the kernel picks a free UDP port, which another socket
	// may hold on TCP: pick again a few times before giving up.
	tries := 1
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		tries = 20
	}
	var lastErr error
	for range tries {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp: %w", err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		lastErr = fmt.Errorf("listen tcp: %w", err)
	}
	return nil, nil, lastErr
}
