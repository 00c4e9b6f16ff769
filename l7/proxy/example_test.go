package proxy_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/proxy"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/userspace/pool"
)

// How the agent runs one http service: a Server over the service's pool,
// serving until its context ends, updated on reload.
func ExampleNew() {
	// The agent builds these from the service's and the pool's config keys.
	svc := service.Config{Name: "web-http", Listen: "127.0.0.1:8080", Pool: "web", Host: service.HostKeep}
	ej := eject.DefaultConfig()
	p := pool.New("web", pool.Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: ej.MaxEjectedPercent}, nil, nil)
	p.SetSource(time.Now(), pool.SourceStatic, []pool.Desired{
		{Addr: netip.MustParseAddrPort("127.0.0.1:8081"), Weight: 1},
		{Addr: netip.MustParseAddrPort("127.0.0.1:8082"), Weight: 1},
	})

	acc := accesslog.New(os.Stdout, time.Second) // may be shared by servers
	srv, err := proxy.New(proxy.Options{
		Service:   svc,
		Pool:      p, // the server follows p's transitions itself
		Ejection:  ej,
		Log:       slog.New(slog.DiscardHandler),
		AccessLog: acc,
	})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0") // the agent listens on svc.Listen
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	// On reload: same listen address and pool, new settings.
	r := retry.DefaultConfig()
	r.Attempts = 2
	svc.Retry = &r
	if err := srv.Update(svc, ej); err != nil {
		panic(err)
	}
	// An operator drains an address: no new request goes there, its
	// pooled connections close.
	_ = p.Drain(time.Now(), netip.MustParseAddrPort("127.0.0.1:8081"))

	cancel() // graceful shutdown
	if err := <-done; err != nil {
		panic(err)
	}
	_ = acc.Close() // once every server using it stopped: writes what is batched
	// Output:
}
