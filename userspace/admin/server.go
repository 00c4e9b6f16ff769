package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/defaults"
)

// DefaultSocket is where the agent listens when the config names no socket.
const DefaultSocket = defaults.AdminSocket

// ErrSocketInUse is returned by Serve when another live process answers on
// the socket path.
var ErrSocketInUse = errors.New("admin socket in use by a live process")

// Limits of the server.
const (
	maxBodyBytes    = 64 << 10
	shutdownTimeout = 5 * time.Second
	probeTimeout    = 500 * time.Millisecond
	// keepInterval is how often Serve checks its socket file is there.
	keepInterval = time.Second
)

// Server serves an Agent over HTTP on a unix socket.
type Server struct {
	agent Agent
	log   *slog.Logger
	mux   *http.ServeMux
	// listening is closed once Serve has its socket (see Listening).
	listening chan struct{}
}

// NewServer returns a server for a. A nil log discards.
func NewServer(a Agent, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{agent: a, log: log, mux: http.NewServeMux(), listening: make(chan struct{})}
	s.mux.HandleFunc("/v1/status", s.only(http.MethodGet, s.handleStatus))
	s.mux.HandleFunc("/v1/flows", s.only(http.MethodGet, s.handleFlows))
	s.mux.HandleFunc("/v1/drain", s.only(http.MethodPost, s.handleDrain))
	s.mux.HandleFunc("/v1/undrain", s.only(http.MethodPost, s.handleUndrain))
	s.mux.HandleFunc("/v1/reload", s.only(http.MethodPost, s.handleReload))
	s.mux.HandleFunc("/v1/node/drain", s.only(http.MethodPost, s.handleNodeDrain))
	s.mux.HandleFunc("/v1/node/undrain", s.only(http.MethodPost, s.handleNodeUndrain))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, KindNotFound, fmt.Sprintf("no endpoint %s", r.URL.Path))
	})
	return s
}

// Listening is closed once Serve listens on its socket: from then on the
// CLI reaches the agent.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Handler returns the HTTP handler of the API, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve listens on socketPath and serves until ctx ends, then shuts down
// gracefully and removes the socket.
//
// The socket's directory is created (0700) when missing. A stale socket file
// left by a dead agent is replaced; a socket another live process answers on
// is not (ErrSocketInUse). The socket is created under a temporary name,
// made 0600 and renamed into place, so it is never reachable with a looser
// mode. A socket file removed while the agent runs (rm, a cleanup of its
// directory) is made again within keepInterval: without it the CLI, and
// `systemctl reload`, could not reach the agent until a restart.
func (s *Server) Serve(ctx context.Context, socketPath string) error {
	l, err := listen(socketPath)
	if err != nil {
		return err
	}
	// Remember which file is ours: on exit, remove the path only if it still
	// is (a newer agent may have replaced it).
	ours, statErr := os.Stat(socketPath)

	srv := &http.Server{
		Handler:           s.peerCheck(s.mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       connContext,
	}

	// Each socket is served by a goroutine of its own; the error of one
	// that was not retired (replaced by a new socket) ends Serve.
	done := make(chan error, 1)
	var serving sync.WaitGroup
	serve := func(l net.Listener, retired *atomic.Bool) {
		serving.Go(func() {
			err := srv.Serve(l)
			if !retired.Load() {
				select {
				case done <- err:
				default:
				}
			}
		})
	}
	retired := new(atomic.Bool)
	serve(l, retired)
	s.log.Info("admin API listening", "socket", socketPath)
	close(s.listening)

	keep := time.NewTicker(keepInterval)
	defer keep.Stop()
	var serveErr error
	for running := true; running; {
		select {
		case serveErr = <-done:
			running = false
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
			if err := srv.Shutdown(sctx); err != nil {
				s.log.Warn("admin API shutdown", "err", err)
				_ = srv.Close()
			}
			cancel()
			running = false
		case <-keep.C:
			if statErr != nil {
				continue
			}
			if _, err := os.Lstat(socketPath); !errors.Is(err, os.ErrNotExist) {
				continue // ours, or a newer agent's: left alone
			}
			nl, err := listen(socketPath)
			if err != nil {
				s.log.Warn("admin socket removed while the agent ran; it cannot be made again", "socket", socketPath, "err", err)
				continue
			}
			if ours, statErr = os.Stat(socketPath); statErr != nil {
				s.log.Warn("admin socket", "socket", socketPath, "err", statErr)
			}
			s.log.Warn("admin socket removed while the agent ran: listening on a new one", "socket", socketPath)
			// The old socket has no name left to be reached by.
			retired.Store(true)
			_ = l.Close()
			l, retired = nl, new(atomic.Bool)
			serve(l, retired)
		}
	}
	retired.Store(true)
	_ = srv.Close()
	serving.Wait()

	if statErr == nil {
		if cur, err := os.Stat(socketPath); err == nil && os.SameFile(ours, cur) {
			if err := os.Remove(socketPath); err != nil {
				s.log.Warn("removing admin socket", "socket", socketPath, "err", err)
			}
		}
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serving admin API on %s: %w", socketPath, serveErr)
	}
	return nil
}

// listen prepares the directory, clears a stale socket and returns a
// listener bound to socketPath with mode 0600.
func listen(socketPath string) (*net.UnixListener, error) {
	if socketPath == "" {
		return nil, errors.New("admin socket path is empty")
	}
	dir := filepath.Dir(socketPath)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating admin socket directory: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	if err := clearStale(socketPath); err != nil {
		return nil, err
	}

	tmp := filepath.Join(dir, "."+filepath.Base(socketPath)+"."+strconv.Itoa(os.Getpid())+".tmp")
	_ = os.Remove(tmp) // left by a crashed process with our pid, never live
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on admin socket: %w", err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		_ = l.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("chmod admin socket: %w", err))
	}
	if err := os.Rename(tmp, socketPath); err != nil {
		return fail(fmt.Errorf("moving admin socket into place: %w", err))
	}
	return l, nil
}

// Probe tells whether an agent could serve on socketPath: nil when nothing
// is there or only a stale socket file, an error matching ErrSocketInUse
// when a live process answers on it, another error when the path is not a
// socket or cannot be checked. The agent calls it before it touches the
// data path, so a second agent started by mistake stops early.
func Probe(socketPath string) error {
	_, err := probe(socketPath)
	return err
}

// probe is Probe that also reports whether a stale socket file is there.
func probe(socketPath string) (stale bool, err error) {
	fi, err := os.Lstat(socketPath)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("admin socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return false, fmt.Errorf("admin socket %s exists and is not a socket", socketPath)
	}
	c, err := net.DialTimeout("unix", socketPath, probeTimeout)
	if err == nil {
		_ = c.Close()
		return false, fmt.Errorf("%s: %w", socketPath, ErrSocketInUse)
	}
	if errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return false, fmt.Errorf("probing existing admin socket %s: %w", socketPath, err)
	}
	return true, nil
}

// clearStale removes socketPath if it is a socket nobody answers on. It
// refuses to remove anything that is not a socket.
func clearStale(socketPath string) error {
	stale, err := probe(socketPath)
	if err != nil || !stale {
		return err
	}
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale admin socket: %w", err)
	}
	return nil
}

type peerKey struct{}

// peer is the credentials of the process at the other end of a connection.
type peer struct {
	uid int
	ok  bool
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, peer{uid: int(cred.Uid), ok: true})
}

// peerCheck refuses peers that are neither root nor the agent's own user.
// The socket's mode already keeps others out; this holds even if someone
// loosens it.
func (s *Server) peerCheck(next http.Handler) http.Handler {
	self := os.Geteuid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(peerKey{}).(peer)
		if p.ok && p.uid != 0 && p.uid != self {
			writeError(w, http.StatusForbidden, KindForbidden, fmt.Sprintf("uid %d may not use the admin API", p.uid))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) only(method string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, KindBadRequest, fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, method))
			return
		}
		h(w, r)
	}
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.agent.Status(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := FlowFilter{Service: q.Get("service"), Backend: q.Get("backend")}
	if f.Backend != "" {
		if _, err := parseAddress(f.Backend); err != nil {
			writeError(w, http.StatusBadRequest, KindBadRequest, fmt.Sprintf("backend filter: %v", err))
			return
		}
	}
	flows, err := s.agent.Flows(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if flows == nil {
		flows = []Flow{}
	}
	writeJSON(w, http.StatusOK, flows)
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	s.handleAddressOp(w, r, "drain", s.agent.Drain)
}

func (s *Server) handleUndrain(w http.ResponseWriter, r *http.Request) {
	s.handleAddressOp(w, r, "undrain", s.agent.Undrain)
}

func (s *Server) handleAddressOp(w http.ResponseWriter, r *http.Request, op string, fn func(context.Context, string, string) error) {
	var req AddressRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, KindBadRequest, err.Error())
		return
	}
	if req.Pool == "" || req.Address == "" {
		writeError(w, http.StatusBadRequest, KindBadRequest, "pool and address are required")
		return
	}
	if _, err := parseAddress(req.Address); err != nil {
		writeError(w, http.StatusBadRequest, KindBadRequest, err.Error())
		return
	}
	if err := fn(r.Context(), req.Pool, req.Address); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("admin "+op, "pool", req.Pool, "address", req.Address)
	writeJSON(w, http.StatusOK, Ack{Message: fmt.Sprintf("%s %s: %s done", req.Pool, req.Address, op)})
}

func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if err := s.agent.Reload(r.Context()); err != nil {
		// Every reload failure but a cancelled request means the running
		// config stays: report it as refused with the agent's reason.
		if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && kindOf(err) == KindInternal {
			err = fmt.Errorf("%w: %w", ErrReloadRefused, err)
		}
		s.fail(w, r, err)
		return
	}
	s.log.Info("admin reload applied")
	writeJSON(w, http.StatusOK, Ack{Message: "config reloaded"})
}

func (s *Server) handleNodeDrain(w http.ResponseWriter, r *http.Request) {
	var req NodeDrainRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, KindBadRequest, err.Error())
		return
	}
	timeout, err := optionalDuration("timeout", req.Timeout)
	if err != nil {
		writeError(w, http.StatusBadRequest, KindBadRequest, err.Error())
		return
	}
	quiet, err := optionalDuration("quiet", req.Quiet)
	if err != nil {
		writeError(w, http.StatusBadRequest, KindBadRequest, err.Error())
		return
	}
	if err := s.agent.NodeDrain(r.Context(), timeout, quiet); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("admin node drain", "timeout", req.Timeout, "quiet", req.Quiet)
	writeJSON(w, http.StatusOK, Ack{Message: "node draining: every VIP withdrawn"})
}

func (s *Server) handleNodeUndrain(w http.ResponseWriter, r *http.Request) {
	if err := s.agent.NodeUndrain(r.Context()); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("admin node undrain")
	writeJSON(w, http.StatusOK, Ack{Message: "node serving: usable VIPs announced"})
}

// optionalDuration parses a duration field: "" is 0, anything else must
// be between 1ms and 24h.
func optionalDuration(name, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Millisecond || d > 24*time.Hour {
		return 0, fmt.Errorf("%s %q: want a duration between 1ms and 24h", name, v)
	}
	return d, nil
}

// fail writes err with the status code its kind maps to.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	kind := kindOf(err)
	code := statusOf(kind)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled):
		code = http.StatusServiceUnavailable
	}
	if code >= 500 {
		s.log.Warn("admin request failed", "path", r.URL.Path, "err", err)
	}
	writeError(w, code, kind, err.Error())
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding request body: %w", err)
	}
	if dec.More() {
		return errors.New("decoding request body: trailing data")
	}
	return nil
}

// parseAddress accepts ip:port or a bare ip.
func parseAddress(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 0), nil
	}
	return netip.AddrPort{}, fmt.Errorf("address %q is not ip:port or ip", s)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the peer went away; nothing to do
}

func writeError(w http.ResponseWriter, code int, kind, msg string) {
	writeJSON(w, code, ErrorResponse{Error: msg, Kind: kind})
}
