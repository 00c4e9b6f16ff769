// Package bpf holds the C sources of sluice's XDP data path and the Go
// bindings bpf2go generates from them (committed, so `go build` needs no
// clang). `make generate` (scripts/generate.sh) regenerates them into a
// temporary directory named by SLUICE_BPF_OUT and moves them here only when
// every program compiled; unset, bpf2go writes here directly. CI fails when
// they differ from the committed ones.
package bpf

//go:generate go tool bpf2go -output-dir "$SLUICE_BPF_OUT" -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type svc_key -type svc_value -type backend -type ct_key -type ct_value -type svc_counters -type backend_counters -type global_counters -type backend_state -type ct_state -type ep_flags -type ep_info -type ep_service -type svc_mode -type addr_info -type addr_flags -type endpoint -type backend_hop -type svc6_key -type svc6_value -type backend6 -type ct6_key -type ct6_value -type endpoint6 -type nat_hint6_value -type ct6_flags -type backend_hop6 -type maglev_line Sluice sluice.c
//go:generate go tool bpf2go -output-dir "$SLUICE_BPF_OUT" -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" XDPPass xdppass.c
//go:generate go tool bpf2go -output-dir "$SLUICE_BPF_OUT" -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type decap_counters Decap decap.c
