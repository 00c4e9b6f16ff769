package datapath

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttachXDP attaches prog to the interface ifindex: mode "native" in the
// driver only, "generic" in generic mode only, anything else native with
// generic as the fallback (onFallback, when set, is told why native was
// refused). generic says which mode it runs in. The caller pins or closes
// the link. Used by the data path and by `sluice decap` (userspace/decap).
func AttachXDP(prog *ebpf.Program, ifindex int, mode string, onFallback func(error)) (l link.Link, generic bool, err error) {
	flags := []link.XDPAttachFlags{link.XDPDriverMode, link.XDPGenericMode}
	switch mode {
	case "native":
		flags = flags[:1]
	case "generic":
		flags = flags[1:]
	}
	for _, f := range flags {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: f})
		if err == nil {
			return l, f == link.XDPGenericMode, nil
		}
		if f == link.XDPDriverMode && len(flags) > 1 && onFallback != nil {
			onFallback(err)
		}
	}
	return nil, false, err
}
