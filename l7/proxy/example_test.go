package proxy_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/sluicelb/sluice/l7/proxy"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/pool"
)

// How the agent runs one http service: a Server over the service's pool,
// serving until its context ends, updated on reload.
func ExampleNew() {
	cfg, err := config.Parse([]byte(`
pools:
  - name: web
    backends: [{address: 127.0.0.1:8081}, {address: 127.0.0.1:8082}]
services:
  - name: web-http
    listen: 127.0.0.1:8080
    protocol: http
    pool: web
`), "example.yaml")
	if err != nil {
		panic(err)
	}
	pc, svc := cfg.Pools[0], cfg.Services[0]
	p := pool.New(pc.Name, pool.Config{DrainTimeout: pc.DrainTimeout.D(), MaxEjectedPercent: pc.Ejection.MaxEjectedPercent}, nil, nil)
	var addrs []pool.Desired
	for _, b := range pc.Backends {
		addrs = append(addrs, pool.Desired{Addr: b.AddrPort, Weight: b.Weight})
	}
	p.SetSource(time.Now(), pool.SourceStatic, addrs)

	srv, err := proxy.New(proxy.Options{
		Service:   svc,
		Pool:      p, // the server follows p's transitions itself
		Ejection:  pc.Ejection,
		Log:       slog.New(slog.DiscardHandler),
		AccessLog: proxy.NewAccessLog(os.Stdout, time.Second),
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
	svc.Retry.Attempts = 2
	if err := srv.Update(svc, pc); err != nil {
		panic(err)
	}
	// An operator drains an address: no new request goes there, its
	// pooled connections close.
	_ = p.Drain(time.Now(), netip.MustParseAddrPort("127.0.0.1:8081"))

	cancel() // graceful shutdown
	if err := <-done; err != nil {
		panic(err)
	}
	// Output:
}
