//go:build ignore

/* A trivial native XDP program for the far ends of the lab's veth pairs: on
 * this kernel a frame redirected (or XDP_TXed) into a veth is only received
 * when the peer has a native XDP program attached. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
