/* Internet checksum helpers (RFC 1071 / RFC 1624). Values are 16-bit words
 * exactly as they sit in the packet: one's complement sums do not care about
 * byte order as long as every word is read the same way. */
#pragma once
#include <linux/types.h>

static __always_inline __u16 csum16_add(__u16 csum, __u16 addend)
{
	__u32 res = (__u32)csum + addend;
	return (__u16)(res + (res >> 16));
}

/* Incremental update of a checksum field when a 16-bit word changes:
 * HC' = ~(~HC + ~m + m')  (RFC 1624, eqn. 3). */
static __always_inline void csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
	*sum = ~csum16_add(csum16_add((__u16)~*sum, (__u16)~old), new);
}

static __always_inline void csum_replace4(__u16 *sum, __u32 old, __u32 new)
{
	csum_replace2(sum, (__u16)(old & 0xffff), (__u16)(new & 0xffff));
	csum_replace2(sum, (__u16)(old >> 16), (__u16)(new >> 16));
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}
