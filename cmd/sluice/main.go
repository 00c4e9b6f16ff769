package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/agent"
	"github.com/sluicelb/sluice/userspace/announce"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
)

func main() {
	// SIGTERM and SIGINT cancel the context: the agent stops (leaving the
	// data path forwarding), client commands abandon their call.
	// A second signal, once the first has cancelled it, gets the default
	// action: it kills a shutdown that hangs.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, systemEnv(), os.Args[1:])
	stop()
	os.Exit(code)
}

// systemEnv is the env of the real binary.
func systemEnv() *env {
	return &env{
		stdout:  os.Stdout,
		stderr:  os.Stderr,
		version: version,
		now:     time.Now,
		// Go kills a program writing to a broken pipe on fd 1 or 2
		// unless SIGPIPE is ignored: the agent must outlive its log's
		// reader (see agentCmd).
		keepOnBrokenPipe: func() { signal.Ignore(syscall.SIGPIPE) },
		stdoutJournal:    func() bool { return isJournalStream(os.Getenv("JOURNAL_STREAM"), os.Stdout) },
		newClient: func(socketPath string) admin.Agent {
			return admin.NewClient(socketPath)
		},
		loadConfig: config.Load,
		openPinned: func(pinPath string) (flowReader, error) {
			r, err := datapath.OpenPinned(pinPath)
			if err != nil {
				return nil, err
			}
			return r, nil
		},
		teardown: func(pinPath string) error {
			// The managed neighbour entries first: they are found through
			// the backends map Teardown removes.
			_, nerr := datapath.RemoveManagedNeighbours(pinPath)
			if errors.Is(nerr, fs.ErrNotExist) {
				nerr = nil // nothing pinned: nothing of ours to remove
			}
			return errors.Join(datapath.Teardown(pinPath), nerr)
		},
		pinsHeld: datapath.PinPathHeld,
		runAgent: agent.Run,
		getenv:   os.Getenv,
		withdrawAll: func(table, protocol int) (int, error) {
			return announce.WithdrawAll(announce.Netlink{Table: table, Protocol: protocol})
		},
	}
}

// isJournalStream is whether f is the stream systemd's journal gave the
// process: JOURNAL_STREAM (v) names its device and inode ("dev:ino"),
// which must still be f's (a shell may have redirected it since).
func isJournalStream(v string, f *os.File) bool {
	dev, ino, ok := strings.Cut(v, ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == d && st.Ino == i
}
