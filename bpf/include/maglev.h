/* Maglev lookup: a new flow's backend from its service's table. One
 * definition for both families' pickers: a service's table (its row of
 * maglev_tables) holds backend slots, and each family looks its
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
 * whose flow hash is h, or 0 when the service has none. The service's
 * table is its row of maglev_tables (maps.h): entry h % maglev_size, read
 * inline (no helper call) from the line holding it. A slot whose backend stopped being active
 * between the state change and the table write is skipped by probing the
 * next few entries. A macro, not a function over a map pointer: the
 * verifier inlines a lookup only in a map it knows at the call site. */
#define DEFINE_PICK_BACKEND(name, type, map)                                   \
	static __always_inline __u32 name(__u32 svc_id, __u32 h, type **out)   \
	{                                                                      \
		__u32 size = cfg.maglev_size;                                  \
		if (size == 0 || svc_id >= MAX_SERVICES)                       \
			return 0;                                              \
		__u32 base = svc_id * ((size + MAGLEV_LINE - 1) / MAGLEV_LINE); \
		__u32 pos = h % size;                                          \
		_Pragma("unroll") for (int i = 0; i < MAGLEV_PROBES; i++)      \
		{                                                              \
			__u32 idx = base + pos / MAGLEV_LINE;                  \
			struct maglev_line *line =                             \
				bpf_map_lookup_elem(&maglev_tables, &idx);     \
			if (!line)                                             \
				return 0;                                      \
			__u32 s = line->slot[pos % MAGLEV_LINE];               \
			if (s == 0)                                            \
				return 0; /* empty table: no backend */        \
			type *b = bpf_map_lookup_elem(&map, &s);               \
			if (b && b->state == BACKEND_ACTIVE) {                 \
				*out = b;                                      \
				return s;                                      \
			}                                                      \
			pos = pos + 1 == size ? 0 : pos + 1;                   \
		}                                                              \
		return 0;                                                      \
	}
