/* Maglev lookup: a new flow's backend from its service's table. One
 * definition for both families' pickers: a service's table (an inner
 * array of maglev_outer) holds backend slots, and each family looks its
 * slots up in its own backends map (backends, backends6), where a slot of
 * the other family is free (never active, never picked). */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "config.h"

/* DEFINE_PICK_BACKEND(name, type, map) defines
 *   __u32 name(__u32 svc_id, __u32 h, type **out)
 * returning the slot of an active backend (in map, of type) for a new flow
 * whose flow hash is h, or 0 when the service has none. A slot whose
 * backend stopped being active between the state change and the table
 * swap is skipped by probing the next few entries. A macro, not a
 * function over a map pointer: the verifier inlines a lookup only in a
 * map it knows at the call site. */
#define DEFINE_PICK_BACKEND(name, type, map)                                   \
	static __always_inline __u32 name(__u32 svc_id, __u32 h, type **out)   \
	{                                                                      \
		__u32 size = cfg.maglev_size;                                  \
		if (size == 0)                                                 \
			return 0;                                              \
		void *table = bpf_map_lookup_elem(&maglev_outer, &svc_id);     \
		if (!table)                                                    \
			return 0;                                              \
		_Pragma("unroll") for (int i = 0; i < MAGLEV_PROBES; i++)      \
		{                                                              \
			__u32 idx = (h + i) % size;                            \
			__u32 *slot = bpf_map_lookup_elem(table, &idx);        \
			if (!slot || *slot == 0)                               \
				return 0; /* empty table: no backend */        \
			__u32 s = *slot;                                       \
			type *b = bpf_map_lookup_elem(&map, &s);               \
			if (b && b->state == BACKEND_ACTIVE) {                 \
				*out = b;                                      \
				return s;                                      \
			}                                                      \
		}                                                              \
		return 0;                                                      \
	}
