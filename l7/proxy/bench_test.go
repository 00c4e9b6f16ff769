package proxy

import (
	"io"
	"net/http"
	"testing"
)

// Throughput of the proxy on loopback against an in-process backend; the
// lab benchmark (docs/benchmarks.md) is the one that compares with nginx.
func BenchmarkProxy(b *testing.B) {
	for _, keepAlive := range []bool{true, false} {
		name := "keep-alive"
		if !keepAlive {
			name = "new-connection"
		}
		b.Run(name, func(b *testing.B) {
			t := &testing.T{}
			be := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
			defer be.srv.Close()
			p := newPool(t, nil, be.addr)
			h := start(t, p, func(o *Options) { o.AccessLog = nil })
			tr := &http.Transport{MaxIdleConnsPerHost: 1024, DisableKeepAlives: !keepAlive}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(h.url + "/")
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}
