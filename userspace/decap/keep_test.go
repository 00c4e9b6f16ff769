package decap

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/sluicelb/sluice/internal/syncbuf"
	"github.com/sluicelb/sluice/internal/testenv"
)

// inNetns runs fn on a thread of its own in a new network namespace
// (netlink, XDP and /proc/sys/net then act there); the thread is never
// unlocked, so it ends with the goroutine.
func inNetns(t *testing.T, fn func(ns netns.NsHandle)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		fn(ns)
	}()
	<-done
}

// bridgeUp makes an empty bridge named name, up (an interface XDP
// attaches to, generic mode).
func bridgeUp(name string) error {
	la := netlink.NewLinkAttrs()
	la.Name = name
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		return err
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// xdpAttached says whether an XDP program runs on interface name.
func xdpAttached(name string) bool {
	l, err := netlink.LinkByName(name)
	return err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
}

// TestAttachAgainAfterLinkLost: `sluice decap attach` run again where the
// pinned link died (detached by another tool) attaches the program anew
// (it used to take the dead pin for an attachment and do nothing).
func TestAttachAgainAfterLinkLost(t *testing.T) {
	testenv.RequireRoot(t, "XDP in a network namespace")
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-decap-againtest-%d", os.Getpid()))
	inNetns(t, func(netns.NsHandle) {
		defer func() { _ = Detach(dir) }()
		if err := bridgeUp("da0"); err != nil {
			t.Fatalf("bridge: %v", err)
		}
		o := Options{Interfaces: []string{"da0"}, VIPs: []netip.Addr{vip}, PinPath: dir, XDPMode: "auto"}
		if err := Attach(o); err != nil || !xdpAttached("da0") {
			t.Fatalf("attach: %v, attached %v", err, xdpAttached("da0"))
		}
		l, err := link.LoadPinnedLink(linkPin(dir, "da0"), nil)
		if err != nil {
			t.Fatalf("pinned link: %v", err)
		}
		if err := l.Detach(); err != nil {
			t.Fatalf("detach: %v", err)
		}
		l.Close()
		if xdpAttached("da0") {
			t.Fatal("attached after its link's detach")
		}
		// decap status tells the dead link.
		if st, err := Read(dir); err != nil || !strings.Contains(st.Lost["da0"], "detached") {
			t.Errorf("status after the detach: %+v, %v; want da0 lost", st, err)
		}
		if err := Attach(o); err != nil || !xdpAttached("da0") {
			t.Errorf("attach again: %v, attached %v; want the program attached anew", err, xdpAttached("da0"))
		}
		if st, err := Read(dir); err != nil || len(st.Lost) != 0 || len(st.Interfaces) != 1 {
			t.Errorf("status after attaching again: %+v, %v; want da0, none lost", st, err)
		}
	})
}

// TestKeepAttachesAgain: with Keep running, the program's link detached by
// another tool, then the interface deleted and made again, then the VIP
// removed from lo: each is repaired within a few checks, the new
// interface gets its host setup, and each repair is logged.
func TestKeepAttachesAgain(t *testing.T) {
	testenv.RequireRoot(t, "XDP in a network namespace")
	const ifname = "dk0"
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-decap-keeptest-%d", os.Getpid()))
	inNetns(t, func(ns netns.NsHandle) {
		defer func() { _ = Detach(dir) }()
		bridge := func() error { return bridgeUp(ifname) }
		attached := func() bool { return xdpAttached(ifname) }
		if err := bridge(); err != nil {
			t.Fatalf("bridge: %v", err)
		}
		o := Options{Interfaces: []string{ifname}, VIPs: []netip.Addr{vip}, PinPath: dir, XDPMode: "auto"}
		if err := Attach(o); err != nil {
			t.Fatalf("attach: %v", err)
		}
		if err := Setup(o.Interfaces, o.VIPs); err != nil {
			t.Fatalf("setup: %v", err)
		}
		var logs syncbuf.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		kept := make(chan error, 1)
		go func() {
			// Keep's own thread, in the same namespace.
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				kept <- err
				return
			}
			kept <- Keep(ctx, KeepOptions{Options: o, Setup: true, Interval: 20 * time.Millisecond,
				Log: slog.New(slog.NewTextHandler(&logs, nil))})
		}()
		defer func() {
			cancel()
			if err := <-kept; err != nil {
				t.Errorf("Keep: %v", err)
			}
		}()
		waitUntil := func(what string, ok func() bool) {
			t.Helper()
			for end := time.Now().Add(3 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("%s: not within 3 s; log:\n%s", what, logs.String())
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
		if l := logs.String(); l != "" {
			t.Errorf("Keep logged with nothing lost:\n%s", l)
		}

		// Detached by another tool.
		l, err := link.LoadPinnedLink(linkPin(dir, ifname), nil)
		if err != nil {
			t.Fatalf("pinned link: %v", err)
		}
		if err := l.Detach(); err != nil {
			t.Fatalf("detach: %v", err)
		}
		l.Close()
		waitUntil("attached again after a detach", func() bool {
			return attached() && strings.Contains(logs.String(), `msg="decap program lost on an interface, attached again" interface=dk0 lost="the link was detached`)
		})

		// The interface deleted, then made again (rp_filter back at its
		// default until the setup runs again).
		dl, _ := netlink.LinkByName(ifname)
		if err := netlink.LinkDel(dl); err != nil {
			t.Fatalf("delete: %v", err)
		}
		waitUntil("the loss reported", func() bool {
			return strings.Contains(logs.String(), `level=ERROR msg="decap program lost on an interface and not attached again`)
		})
		if err := bridge(); err != nil {
			t.Fatalf("bridge again: %v", err)
		}
		waitUntil("attached to the new interface, with its host setup", func() bool {
			rp, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + ifname + "/rp_filter")
			return attached() && strings.TrimSpace(string(rp)) == "2" &&
				strings.Count(logs.String(), "attached again\" interface=dk0") == 2
		})

		// The VIP removed from lo.
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.AddrDel(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(vip.AsSlice()), Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatalf("remove the VIP from lo: %v", err)
		}
		waitUntil("the VIP back on lo", func() bool {
			addrs, _ := netlink.AddrList(lo, netlink.FAMILY_V4)
			for _, a := range addrs {
				if a.IP.Equal(net.IP(vip.AsSlice())) {
					return strings.Contains(logs.String(), "VIPs removed from lo: added again")
				}
			}
			return false
		})
	})
}
