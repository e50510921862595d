/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet parsing for the cgroup_skb programs.
 */
#ifndef CALLSCOPE_PACKET
#define CALLSCOPE_PACKET

/* Packet parsing for the cgroup_skb programs: their data starts at L3. */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define DNS_PORT 53

struct packet {
	__u32 payload; /* offset of the transport payload */
	__u32 len;     /* its length */
	__u32 seq;     /* TCP sequence number of its first byte */
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 proto;
	__u8 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int parse_packet(struct __sk_buff *skb, struct packet *p)
{
	__u32 l4;
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		/* Only a datagram's first fragment holds its transport header. */
		if (((h[6] & 0x1f) | h[7]) != 0)
			return -1;
		l4 = (h[0] & 0xf) * 4;
		p->proto = h[9];
		p->family = AF_INET;
		__builtin_memcpy(p->saddr, &h[12], 4);
		__builtin_memcpy(p->daddr, &h[16], 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		l4 = 40; /* extension headers are not followed: rare on TCP and DNS */
		p->proto = h[6];
		p->family = AF_INET6;
		__builtin_memcpy(p->saddr, &h[8], 16);
		__builtin_memcpy(p->daddr, &h[24], 16);
	} else {
		return -1;
	}
	if (l4 < 20)
		return -1;
	if (p->proto == IPPROTO_TCP) {
		__u8 t[14];
		if (bpf_skb_load_bytes(skb, l4, t, sizeof(t)))
			return -1;
		p->sport = (t[0] << 8) | t[1];
		p->dport = (t[2] << 8) | t[3];
		p->seq = ((__u32)t[4] << 24) | ((__u32)t[5] << 16) | ((__u32)t[6] << 8) | t[7];
		p->payload = l4 + (t[12] >> 4) * 4;
	} else if (p->proto == IPPROTO_UDP) {
		__u8 u[4];
		if (bpf_skb_load_bytes(skb, l4, u, sizeof(u)))
			return -1;
		p->sport = (u[0] << 8) | u[1];
		p->dport = (u[2] << 8) | u[3];
		p->payload = l4 + 8;
	} else {
		return -1;
	}
	p->len = skb->len > p->payload ? skb->len - p->payload : 0;
	return 0;
}

#endif
