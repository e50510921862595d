/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The payload path: cgroup_skb/egress copies ClientHellos (and reports
 * plaintext sent where TLS is expected), cgroup_skb/ingress ServerHellos
 * and DNS answers, through per-CPU scratch records; cgroup/sock_create
 * keeps UDP sockets' network namespaces where the kernel gives cgroup_skb
 * no other way to them.
 */
#ifndef CALLSCOPE_PAYLOAD
#define CALLSCOPE_PAYLOAD

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
	if (!udp_netns_hook || sk->type != SOCK_DGRAM || sk->protocol != IPPROTO_UDP)
		return 1;
	__u32 *ns = bpf_sk_storage_get(&udp_netns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (ns)
		*ns = bpf_get_current_task_btf()->nsproxy->net_ns->ns.inum;
	return 1;
}

/*
 * skb_netns is the network namespace of the socket receiving skb: the
 * namespace whose resolver asked. 0 when it cannot be told (a UDP socket
 * made before sock_create was attached, on a kernel before 6.3): names are
 * then shared across namespaces.
 */
static __always_inline __u32 skb_netns(struct __sk_buff *skb)
{
	if (bpf_ksym_exists(bpf_cast_to_kern_ctx)) {
		struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
		return BPF_CORE_READ(kskb, sk, __sk_common.skc_net.net, ns.inum);
	}
	struct bpf_sock *sk = skb->sk;
	if (!udp_netns_hook || !sk)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		return ((struct sock *)tp)->__sk_common.skc_net.net->ns.inum;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	__u32 *ns = bpf_sk_storage_get(&udp_netns, sk, 0, 0);
	return ns ? *ns : 0;
}

/*
 * emit_payload copies n bytes of the packet from offset from into a payload
 * record. The record goes through a per-CPU scratch buffer so that the ring
 * holds only the bytes copied, not PAYLOAD_MAX for every record.
 */
static __always_inline struct payload_event *scratch_enter(void)
{
	__u32 zero = 0;
	__u32 *depth = bpf_map_lookup_elem(&scratch_depth, &zero);
	if (!depth)
		return NULL;
	__u32 slot = *depth;
	if (slot >= SCRATCH_SLOTS) {
		count(STAT_PAYLOAD_LOST);
		return NULL;
	}
	struct payload_event *e = bpf_map_lookup_elem(&scratch, &slot);
	if (e)
		*depth = slot + 1;
	return e;
}

static __always_inline void scratch_exit(void)
{
	__u32 zero = 0;
	__u32 *depth = bpf_map_lookup_elem(&scratch_depth, &zero);
	if (depth && *depth > 0)
		*depth -= 1;
}

static __always_inline void fill_payload(struct __sk_buff *skb, struct packet *p, struct payload_event *e, __u8 kind,
					 __u64 cookie, __u32 n, __u16 offset, __u16 want, __u8 more);

static __always_inline void emit_payload(struct __sk_buff *skb, struct packet *p, __u8 kind, __u64 cookie, __u32 n,
					 __u16 offset, __u16 want, __u8 more)
{
	if (n > PAYLOAD_MAX)
		n = PAYLOAD_MAX;
	if (n == 0)
		return;
	struct payload_event *e = scratch_enter();
	if (!e)
		return;
	fill_payload(skb, p, e, kind, cookie, n, offset, want, more);
	scratch_exit();
}

static __always_inline void fill_payload(struct __sk_buff *skb, struct packet *p, struct payload_event *e, __u8 kind,
					 __u64 cookie, __u32 n, __u16 offset, __u16 want, __u8 more)
{
	/*
	 * Restate 1 <= n <= PAYLOAD_MAX in a form the verifier follows: clang
	 * tests a copy of n above, so the bound would not reach the call.
	 */
	__u64 len = n - 1;
	asm volatile("%[len] &= %[mask]" : [len] "+r"(len) : [mask] "i"(PAYLOAD_MAX - 1));
	len += 1;
	if (bpf_skb_load_bytes(skb, p->payload, e->data, len))
		return;

	/*
	 * Of the caller, only the socket's cgroup, and for a DNS answer the
	 * namespace that asked: user space gives a TLS record the caller of
	 * the connect with the same cookie.
	 */
	__builtin_memset(&e->ev.caller, 0, sizeof(e->ev.caller));
	e->ev.caller.cgroup_id = bpf_skb_cgroup_id(skb);
	if (kind == KIND_DNS)
		e->ev.caller.netns = skb_netns(skb);
	set_header(&e->ev.h, kind, cookie, bpf_ktime_get_boot_ns());
	e->ev.h.family = p->family;
	e->ev.sport = p->sport;
	e->ev.dport = p->dport;
	__builtin_memcpy(e->ev.saddr, p->saddr, sizeof(e->ev.saddr));
	__builtin_memcpy(e->ev.daddr, p->daddr, sizeof(e->ev.daddr));
	e->ev.aux = 0;
	e->offset = offset;
	e->len = len;
	e->want = want;
	e->more = more;
	e->proto = p->proto;

	if (bpf_ringbuf_output(&events, e, sizeof(*e) - PAYLOAD_MAX + len, wakeup_flags()))
		count(STAT_PAYLOAD_LOST);
}

/*
 * tracked reports whether sock_ops tracks the TCP socket tp: an outbound
 * connect, on which TCP_CONNECT switched the STATE callback on. The flag is
 * read from the socket itself, so that the packets of every other socket
 * (accepted ones, listeners) cost no hash lookup.
 */
static __always_inline int tracked(struct tcp_sock *tp)
{
	return tp->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG;
}

static __always_inline int tls_port(__u16 port)
{
	__u32 key = port >> 6;
	__u64 *bits = bpf_map_lookup_elem(&tls_ports, &key);
	return bits && (*bits >> (port & 63)) & 1;
}

/* report_plaintext says a tracked connection's first data, to a port
 * where TLS is expected, was no TLS handshake. */
static __always_inline void report_plaintext(__u64 cookie)
{
	struct header *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_PLAINTEXT_LOST);
		return;
	}
	set_header(e, KIND_PLAINTEXT, cookie, bpf_ktime_get_boot_ns());
	submit(e);
}

/*
 * Data segments of a connection's first flights worth a look: a ClientHello
 * of PAYLOAD_MAX bytes spans 8 at the smallest MSS, and retransmissions
 * count too. A hello not complete by then never will be.
 */
#define FIRST_FLIGHT_SEGS 64

SEC("cgroup_skb/egress")
int egress(struct __sk_buff *skb)
{
	/*
	 * The fast path of every packet but a tracked connection's first data
	 * segments: the socket's own counters, no lookup. data_segs_out already
	 * counts this segment when it carries data; 0 means a SYN or a bare ACK.
	 */
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || !tracked(tp))
		return 1;
	__u32 segs = tp->data_segs_out;
	if (segs == 0 || segs > FIRST_FLIGHT_SEGS)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(skb);
	struct hello *h = bpf_map_lookup_elem(&hellos, &cookie);
	if (h && h->phase != PHASE_CLIENT_HELLO)
		return 1;
	/* Only the first data can start a ClientHello: bytes_sent counts
	 * this segment's, and those of every segment sent before it. */
	if (!h && tp->bytes_sent > 0xffff)
		return 1;

	struct packet p;
	if (parse_packet(skb, &p) || p.proto != IPPROTO_TCP || p.len == 0)
		return 1;
	if (!h) {
		if (tp->bytes_sent != p.len)
			return 1;
		__u8 r[6];
		/* A TLS handshake record (type 22, version 3.x, its length)
		 * holding a ClientHello (handshake type 1). */
		if (p.len < sizeof(r) || bpf_skb_load_bytes(skb, p.payload, r, sizeof(r)) || r[0] != 0x16 ||
		    r[1] != 3 || r[5] != 1) {
			if (tls_port(p.dport))
				report_plaintext(cookie);
			return 1;
		}
		__u32 want = 5 + (((__u32)r[3] << 8) | r[4]);
		__u8 more = 0;
		if (want > PAYLOAD_MAX) {
			want = PAYLOAD_MAX;
			more = 1;
		}
		__u32 n = p.len < want ? p.len : want;
		emit_payload(skb, &p, KIND_TLS_CLIENT, cookie, n, 0, want, more);
		struct hello next = {.phase = PHASE_SERVER_HELLO};
		if (n < want) {
			next.phase = PHASE_CLIENT_HELLO;
			next.next_seq = p.seq + n;
			next.want = want;
			next.got = n;
		}
		bpf_map_update_elem(&hellos, &cookie, &next, BPF_ANY);
		return 1;
	}

	/* PHASE_CLIENT_HELLO: the next segment of a ClientHello. */
	if (p.seq != h->next_seq) {
		__s32 seen = (__s32)(h->next_seq - p.seq);
		if (seen <= 0) {
			/* A gap: user space reports the hello as truncated. */
			h->phase = PHASE_SERVER_HELLO;
			return 1;
		}
		if ((__u32)seen >= p.len)
			return 1; /* a retransmission of what was copied */
		/* A retransmission merged with new bytes: take the new ones. */
		p.payload += seen;
		p.len -= seen;
	}
	__u32 n = h->want > h->got ? h->want - h->got : 0;
	if (n > p.len)
		n = p.len;
	emit_payload(skb, &p, KIND_TLS_CLIENT, cookie, n, h->got, h->want, 0);
	h->got += n;
	h->next_seq += n;
	if (h->got >= h->want)
		h->phase = PHASE_SERVER_HELLO;
	return 1;
}

SEC("cgroup_skb/ingress")
int ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	struct packet p;
	__u64 cookie = 0;
	/* The peer's port, in network order in the upper half; 0 when not connected. */
	__u32 rport = skb->remote_port;
	__u32 dns = (__u32)bpf_htons(DNS_PORT) << 16;

	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		/*
		 * Only a tracked connection's first data segment in can be the
		 * server's first payload. The socket's counters say so without a
		 * lookup: segs_in and data_segs_in do not count this segment yet.
		 */
		if (tracked(tp) && ((struct sock *)tp)->__sk_common.skc_state == TCP_ESTABLISHED &&
		    tp->data_segs_in == 0 && tp->segs_in < FIRST_FLIGHT_SEGS) {
			cookie = bpf_get_socket_cookie(skb);
			struct hello *h = bpf_map_lookup_elem(&hellos, &cookie);
			if (h) {
				if (parse_packet(skb, &p) || p.proto != IPPROTO_TCP || p.len == 0)
					return 1;
				if (h->phase == PHASE_SERVER_HELLO)
					emit_payload(skb, &p, KIND_TLS_SERVER, cookie,
						     p.len < SERVER_HELLO_MAX ? p.len : SERVER_HELLO_MAX, 0, 0, 0);
				/*
				 * The server has spoken: its hello is read, or it did
				 * before the ClientHello was whole. Either way, done.
				 */
				bpf_map_delete_elem(&hellos, &cookie);
				return 1;
			}
		}
		/* TCP brings DNS answers only to a socket connected to port 53;
		 * a listener's packets are connections, not answers. */
		if (rport != dns)
			return 1;
	} else if (rport != 0 && rport != dns) {
		/* A UDP socket connected elsewhere gets nothing from port 53; an
		 * unconnected one, such as a resolver's, has its packets parsed. */
		return 1;
	}

	if (parse_packet(skb, &p) || p.sport != DNS_PORT || p.len == 0)
		return 1;
	if (!cookie)
		cookie = bpf_get_socket_cookie(skb);
	emit_payload(skb, &p, KIND_DNS, cookie, p.len, 0, 0, 0);
	return 1;
}

#endif
