/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps the programs share, and the constants the loader sets before
 * they load (what the kernel allows, and what was asked for).
 */
#ifndef CALLSCOPE_MAPS
#define CALLSCOPE_MAPS

/* A connection whose ClientHello is being read, from its first segment to
 * the server's answer. */
struct hello {
	__u32 next_seq; /* TCP sequence number of the next ClientHello byte */
	__u16 want;
	__u16 got;
	__u8 phase;
	__u8 _pad[3];
};

struct dest {
	__u8 daddr[16];
	__u16 dport; /* host byte order */
	__u16 family;
	__u32 _pad;
};

/*
 * The connect(2) a thread made last, armed from connect4/6 until
 * TCP_CONNECT disarms it. The caller is taken once, there, for the start
 * record too: both run inside the same connect(2). A thread that connects
 * again reuses its record, so the common path allocates nothing.
 */
struct pending {
	struct caller caller;
	struct dest dest;
	__u64 cookie;
	__u8 armed;
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* resized by the loader */
} events SEC(".maps");

/*
 * Connections whose ClientHello is being read, by socket cookie, until the
 * server answers or the connection closes. An LRU, as what an eviction
 * loses is one connection's ServerHello or the end of its ClientHello, not
 * an event.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	/* Per-CPU LRU lists: an insert takes no lock shared across CPUs. */
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, 32768); /* resized by the loader */
	__type(key, __u64);
	__type(value, struct hello);
} hellos SEC(".maps");

/*
 * Where a payload record is put together before it goes to the ring: one
 * slot per nesting level, as a softirq can run ingress on a CPU whose
 * egress or exec program it interrupted.
 */
#define SCRATCH_SLOTS 3
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct payload_event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scratch_depth SEC(".maps");

/*
 * The per-thread records: in task storage where every program that reads
 * them may use it (Linux 6.x; not 5.15 or 6.1), else in a hash by thread
 * id, whose entry goes when its thread exits. The loader shrinks the one
 * not used to a single entry.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pending);
} pendings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	/* Threads alive that have connected: about 10 MiB, preallocated, as
	 * 5.15's tracepoints may not use a hash that allocates. */
	__uint(max_entries, 65536); /* resized by the loader */
	__type(key, __u32);
	__type(value, struct pending);
} thread_pendings SEC(".maps");

/*
 * Sockets whose start record was lost (and counted), by cookie: another
 * program (a second callscope, in a rolling update) may still switch on
 * the STATE callback that brings their outcome, whose loss then is not
 * this instance's to count. Looked up only when an outcome is lost.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} lost_starts SEC(".maps");

/*
 * Processes whose end was reported, by tgid and start time: two threads
 * leaving at once can both see the process end, and only the first to
 * claim it here reports it. An LRU: a process's key never comes back.
 */
struct exited {
	__u64 start;
	__u32 tgid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exited);
	__type(value, __u8);
} exited SEC(".maps");

/* The ports where TLS is expected, one bit each, set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} tls_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Wake the reader only once this much is waiting; a timer in user space
 * collects the rest. A wakeup per event costs far more than the event.
 */
volatile const __u64 wakeup_bytes = 1 << 20;

/*
 * What the loader found the kernel to allow, and attached. A program whose
 * feature is off loads as a no-op: the verifier skips what a constant
 * makes unreachable, helpers the kernel lacks included.
 */
/* connect4/6 arm the per-thread records. */
volatile const __u8 connect_hook = 1;
/* The per-thread records are in task storage, not thread_pendings. */
volatile const __u8 task_storage = 1;
/* sock_release reports a socket whose connect(2) sent no SYN. */
volatile const __u8 release_hook = 1;
/* sock_ops may read the current task (Linux 6.x; not 5.15 or 6.1): a
 * connect that connect4/6 did not see still gets its caller. */
volatile const __u8 sockops_current = 1;

/* Whether the syscall-exit tracepoint is attached, to report failures
 * before the SYN at once, with their error. */
volatile const __u8 syscall_errors = 0;

/*
 * Kernels without bpf_cast_to_kern_ctx (before 6.3) give cgroup_skb no way
 * to a UDP socket's network namespace: sock_create keeps it on each UDP
 * socket as the socket is made, when the current task's namespace is the
 * socket's.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} udp_netns SEC(".maps");

/* sock_create is attached: udp_netns is kept. */
volatile const __u8 udp_netns_hook = 0;

#endif
