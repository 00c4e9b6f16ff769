// Command grpcbackend is the e2e lab's gRPC test backend and client.
//
//	grpcbackend serve --listen :50051 --name be1 [--unavailable]
//	grpcbackend call --target 198.18.1.101:50051 --mode unary|stream [--count N] [--messages M] [--interval D]
//
// serve answers grpc.testing.TestService over h2c (prior knowledge):
// UnaryCall with its name as the response's hostname, FullDuplexCall
// echoing each message prefixed with its name. With --unavailable every
// call fails with UNAVAILABLE before any message. It prints one line per
// connection opened and closed ("conn-open ADDR", "conn-closed ADDR").
//
// call makes --count calls through the target (unary, or bidirectional
// streams of --messages messages --interval apart, each waiting for its
// echo) and prints one JSON report: calls ok and failed, answers per
// backend name, errors by gRPC code.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpcbackend serve|call [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "call":
		err = call(os.Args[2:])
	default:
		err = fmt.Errorf("unknown verb %q: serve or call", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcbackend:", err)
		os.Exit(1)
	}
}

type server struct {
	testpb.UnimplementedTestServiceServer
	name        string
	unavailable bool
}

func (s *server) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s.unavailable {
		return nil, status.Error(codes.Unavailable, s.name+" is unavailable")
	}
	return &testpb.SimpleResponse{Hostname: s.name, Payload: req.GetPayload()}, nil
}

func (s *server) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	if s.unavailable {
		return status.Error(codes.Unavailable, s.name+" is unavailable")
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		body := append([]byte(s.name+":"), req.GetPayload().GetBody()...)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

// connLog prints the connections a listener accepts and their end.
type connLog struct{ net.Listener }

func (l connLog) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		fmt.Println("conn-open", c.RemoteAddr())
		c = &loggedConn{Conn: c}
	}
	return c, err
}

type loggedConn struct {
	net.Conn
	once sync.Once
}

func (c *loggedConn) Close() error {
	c.once.Do(func() { fmt.Println("conn-closed", c.RemoteAddr()) })
	return c.Conn.Close()
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", ":50051", "address to listen on")
	name := fs.String("name", "", "backend name in answers")
	unavailable := fs.Bool("unavailable", false, "fail every call with UNAVAILABLE")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, &server{name: *name, unavailable: *unavailable})
	return gs.Serve(connLog{l})
}

type report struct {
	OK        int            `json:"ok"`
	Failed    int            `json:"failed"`
	ByBackend map[string]int `json:"by_backend"`
	Codes     map[string]int `json:"codes"`
	Errors    []string       `json:"errors,omitempty"`
}

func (r *report) fail(err error) {
	r.Failed++
	r.Codes[status.Code(err).String()]++
	if len(r.Errors) < 10 {
		r.Errors = append(r.Errors, err.Error())
	}
}

func call(args []string) error {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	target := fs.String("target", "", "host:port to call")
	mode := fs.String("mode", "unary", "unary or stream")
	count := fs.Int("count", 1, "calls (bounded to 10000)")
	messages := fs.Int("messages", 3, "messages per stream (bounded to 10000)")
	interval := fs.Duration("interval", 0, "pause between two calls (unary) or two messages (stream)")
	timeout := fs.Duration("timeout", 10*time.Second, "deadline of one call")
	if err := fs.Parse(args); err != nil {
		return err
	}
	*count, *messages = min(*count, 10000), min(*messages, 10000)
	cc, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	defer cc.Close()
	c := testpb.NewTestServiceClient(cc)
	rep := &report{ByBackend: map[string]int{}, Codes: map[string]int{}}
	for i := range *count {
		if i > 0 && *interval > 0 && *mode == "unary" {
			time.Sleep(*interval)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		switch *mode {
		case "unary":
			resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}})
			if err != nil {
				rep.fail(err)
			} else {
				rep.OK++
				rep.ByBackend[resp.GetHostname()]++
			}
		case "stream":
			name, err := stream(ctx, c, *messages, *interval)
			if err != nil {
				rep.fail(err)
			} else {
				rep.OK++
				rep.ByBackend[name]++
			}
		default:
			cancel()
			return fmt.Errorf("mode %q: unary or stream", *mode)
		}
		cancel()
	}
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// stream runs one bidirectional stream: each message waits for its echo.
// It returns the name of the backend that echoed them.
func stream(ctx context.Context, c testpb.TestServiceClient, messages int, interval time.Duration) (string, error) {
	st, err := c.FullDuplexCall(ctx)
	if err != nil {
		return "", err
	}
	name := ""
	for i := range messages {
		if i > 0 && interval > 0 {
			time.Sleep(interval)
		}
		msg := fmt.Sprintf("m%d", i)
		if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
			_, rerr := st.Recv()
			return "", errors.Join(err, rerr)
		}
		resp, err := st.Recv()
		if err != nil {
			return "", err
		}
		got := string(resp.GetPayload().GetBody())
		n, echoed, ok := strings.Cut(got, ":")
		if !ok || echoed != msg || name != "" && n != name {
			return "", fmt.Errorf("message %d: echo %q", i, got)
		}
		name = n
	}
	if err := st.CloseSend(); err != nil {
		return "", err
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("end of stream: %w", err)
	}
	return name, nil
}
