package config

import (
	"os"
	"testing"
)

// FuzzParse feeds arbitrary files to the config parser: it must not panic,
// and a config it accepts never has a fixed backend address the address
// filter refuses (own listeners, loopback, link-local, ... unless the
// pool's allow list loosens it knowingly).
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/full.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("interfaces: [eth0]\npools:\n  - name: web\n    backends: [{address: 127.0.0.1:80}]\nservices:\n  - name: s\n    listen: 198.18.1.100:80\n    pool: web\n"))
	f.Add([]byte("interfaces: [eth0]\npools:\n  - name: web\n    addresses: {allow: [127.0.0.1/32]}\n    backends: [{address: 127.0.0.1:80}]\nservices:\n  - name: s\n    listen: 198.18.1.100:80\n    pool: web\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.yaml")
		if err != nil {
			return
		}
		own := cfg.OwnAddresses()
		for i := range cfg.Pools {
			p := &cfg.Pools[i]
			filter := p.Filter(own)
			for _, b := range p.Backends {
				if b.AddrPort.IsValid() {
					if v := filter.Check(b.AddrPort); !v.OK {
						t.Fatalf("accepted %s in pool %s though the filter refuses it: %s", b.AddrPort, p.Name, v.Detail)
					}
				}
			}
		}
	})
}
