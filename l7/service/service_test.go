package service

import (
	"net/netip"
	"testing"
	"time"
)

func TestParseTrustedProxies(t *testing.T) {
	got, err := ParseTrustedProxies([]string{"198.18.5.0/24", "198.18.6.7", "2001:2::/48", "10.1.2.3/8"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("198.18.5.0/24"), netip.MustParsePrefix("198.18.6.7/32"),
		netip.MustParsePrefix("2001:2::/48"), netip.MustParsePrefix("10.0.0.0/8"),
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: %v, want %v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"", "x", "198.18.5.0/33", "fe80::1%eth0"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCheckUpgrade(t *testing.T) {
	for _, ok := range []string{"websocket", "WebSocket", "foo/1.0"} {
		if err := CheckUpgrade(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "h2c", "H2C", "h2c/1", "h2", "web socket", "a\tb", "a//b", "ws/", "/1"} {
		if CheckUpgrade(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := ClientLimits{HeaderTimeout: time.Second}.WithDefaults()
	if c.HeaderTimeout != time.Second || c.IdleTimeout != DefaultIdleTimeout || c.MaxRequests != DefaultMaxRequests ||
		c.H2MaxStreams != 100 || c.H2StreamWindow != 64<<10 || c.H2ConnWindow != 1<<20 {
		t.Errorf("%+v", c)
	}
	if tt := (Timeouts{Read: time.Second}).WithDefaults(); tt.Read != time.Second || tt.Total != DefaultTotal {
		t.Errorf("%+v", tt)
	}
}
