/* Constants and enums shared by the data path and the agent (exported to Go
 * through bpf2go -type, never mirrored by hand). */
#pragma once

#define MAX_SERVICES 1024   /* service ids 1..1023; 0 means "none" */
#define MAX_BACKENDS 4096   /* backend slots 1..4095; 0 means "none" */
#define MAGLEV_PROBES 8     /* table slots tried when a slot's backend just left */
#define MAGLEV_LINE 16      /* Maglev table entries per maglev_tables element (64 B) */
#define SNAT_TRIES 8        /* source ports tried for a new SNAT flow */
#define REPLY_HOPS 4096     /* reply_hops entries (a power of two): client next hops cached per CPU */
#define EP_NAT_SVCS 4       /* nat services listed per backend endpoint (struct ep_info) */

#define ETH_P_IP_BE   0x0008 /* htons(ETH_P_IP) on little-endian hosts */
#define IP_DF         0x4000
#define IP_MF         0x2000
#define IP_OFFMASK    0x1fff

/* State of a backend slot. Only ACTIVE backends take new flows (the agent
 * builds Maglev tables from them); DRAINING and EJECTED keep their existing
 * flows; REMOVED (or a generation mismatch) makes packets of pinned flows get
 * a TCP RST so clients reconnect at once. */
enum backend_state {
	BACKEND_FREE = 0,
	BACKEND_ACTIVE = 1,
	BACKEND_DRAINING = 2,
	BACKEND_EJECTED = 3,
	BACKEND_REMOVED = 4,
};

/* TCP state of a flow; it picks the idle timeout. */
enum ct_state {
	CT_NEW = 0,
	CT_SYN_SENT = 1,
	CT_ESTABLISHED = 2,
	CT_CLOSING = 3,
	CT_UDP = 4,
	CT_SYN_RECV = 5, /* the backend answered the SYN (SYN-ACK); the client's ACK is awaited */
};

/* ep_info.flags */
enum ep_flags {
	EP_SNAT = 1, /* an snat service's pool holds the endpoint */
};

/* addr_info.flags: what an address is to sluice. */
enum addr_flags {
	ADDR_VIP = 1,     /* a service's VIP */
	ADDR_BACKEND = 2, /* a backend's address (a slot that is not free) */
};

/* How a service rewrites packets. */
enum svc_mode {
	MODE_NAT = 0,  /* DNAT only: backends route replies back through sluice */
	MODE_SNAT = 1, /* DNAT + SNAT: backends can be anywhere */
	MODE_DSR = 2,  /* IPIP to the backend, replies go to the client directly (dsr.h) */
};
