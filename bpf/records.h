/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The records the programs send user space, and the enums they carry: the
 * layouts collector/ decodes, through the Go types bpf2go makes of them.
 * Every record starts with struct header, whose first byte is its kind; a
 * new kind needs a KIND_ value here, a case in collector's Collector.record,
 * and its decoder.
 */
#ifndef CALLSCOPE_RECORDS
#define CALLSCOPE_RECORDS

#define TASK_COMM_LEN 16
#define LOGIN_UID_UNSET 0xffffffff /* AUDIT_UID_UNSET */

enum kind {
	KIND_CONNECT = 1,	/* a connect that failed inside connect(2), before a SYN: the whole event */
	KIND_EXIT = 2,		/* a process ended: user space forgets what it cached of it */
	KIND_TLS_CLIENT = 3,	/* bytes of the client's first flight (struct payload_event) */
	KIND_TLS_SERVER = 4,	/* the server's first bytes (struct payload_event) */
	KIND_DNS = 5,		/* a DNS answer's payload (struct payload_event) */
	KIND_EXEC = 6,		/* a process ran execve: its path and arguments (struct payload_event) */
	KIND_CONNECT_START = 7, /* a tracked connect's SYN is going out: caller and addresses; its outcome follows */
	KIND_OUTCOME = 8,	/* the outcome of a tracked connect (a struct header) */
	/* the first data of an established connect to a TLS port was no TLS
	 * handshake (a struct header, outcome 0) */
	KIND_PLAINTEXT = 9,
	KIND_MAX, /* the number of kinds; keep last */
};

/* What a connection that sent a ClientHello waits for. */
enum phase {
	PHASE_CLIENT_HELLO = 1, /* the rest of a ClientHello that spans segments */
	PHASE_SERVER_HELLO = 2, /* the server's first payload */
};

/* Where the kernel knew the outcome; user space maps it to a name. */
enum outcome {
	OUTCOME_ESTABLISHED = 1,
	/* closed before established: the reason is in err (sk_err, 0 when the caller closed) */
	OUTCOME_CLOSED = 2,
	/* connect(2) failed before a SYN was sent: err is its error when the
	 * syscall-exit tracepoint saw it, else 0 */
	OUTCOME_UNSENT = 3,
};

enum stat {
	STAT_RINGBUF_FULL = 0, /* bpf_ringbuf_reserve failed: an event lost */
	STAT_PENDING_FULL = 1, /* no room for a thread's record: a failure before the SYN would go unseen, and
				* where sock_ops cannot read the current task, so would the caller */
	STAT_EXIT_LOST = 2,    /* no room for a process exit: its cache entry ages out instead */
	STAT_PAYLOAD_LOST = 3, /* a TLS or DNS payload record lost: the ring buffer was full */
	STAT_EXEC_LOST = 4,    /* an execve not reported: a short-lived process may go without exe */
	/* a tracked connect's outcome lost: the ring buffer was full. Its start
	 * record, already read, waits in user space for nothing: counted here
	 * once, it is not counted again when it expires. */
	STAT_OUTCOME_LOST = 5,
	/* a plaintext record lost: the connect goes without its finding */
	STAT_PLAINTEXT_LOST = 6,
	STAT_MAX = 7,
};

/* Identity of the caller, captured inside connect(2). */
struct caller {
	__u64 cgroup_id;
	__u64 task_start; /* group leader start time, ns since boot: with tgid, names the process */
	__u64 start_ns;	  /* when connect(2) was called, ns since boot */
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 netns;
	__u8 comm[TASK_COMM_LEN];
	__u32 login_uid; /* the audit login uid; LOGIN_UID_UNSET when unset, or unknown to the kernel */
	__u8 tty;	 /* the process has a controlling terminal */
	__u8 _pad[3];
};

/*
 * The start of every ring-buffer record: what kind it is, first, and the
 * fields most kinds carry. A KIND_OUTCOME or KIND_PLAINTEXT record is a
 * header alone.
 */
struct header {
	__u8 kind;    /* enum kind */
	__u8 outcome; /* enum outcome: KIND_CONNECT, KIND_OUTCOME */
	__u16 family; /* AF_INET or AF_INET6, for records with addresses */
	__s32 err;    /* KIND_CONNECT, KIND_OUTCOME: the error (OUTCOME_CLOSED: sk_err, 0 when the caller closed) */
	__u64 cookie; /* socket cookie: joins every record of one connection */
	__u64 ts_ns;  /* when it happened, ns since boot */
};

/* A header, the caller and the addresses: KIND_CONNECT, KIND_CONNECT_START,
 * KIND_EXIT, and the start of every payload record. */
struct event {
	struct header h;
	struct caller caller;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u32 aux;   /* by kind: for KIND_EXEC, the parent's tgid */
};

/* Bounds of the records' bytes, as an enum so that Go gets them from bpf2go. */
enum limit {
	/* Bytes copied from one packet at most, and of one ClientHello in all. */
	PAYLOAD_MAX = 4096,
	/* Of the server's first flight only the ServerHello is read: about
	 * 1.2 KiB with a post-quantum key share. */
	SERVER_HELLO_MAX = 2048,
	/* An exec record holds the path (NUL-terminated) at data[0] and the
	 * arguments at data[EXEC_PATH_MAX]. */
	EXEC_PATH_MAX = 256,
	EXEC_ARGS_MAX = 1024,
};

/*
 * A struct event, then up to PAYLOAD_MAX bytes of payload. The ring buffer
 * record is only as long as the bytes copied.
 */
struct payload_event {
	struct event ev;
	__u16 offset; /* of these bytes in the flight: a ClientHello spanning segments comes in pieces */
	__u16 len;    /* bytes in data */
	__u16 want;   /* bytes of the flight wanted in all (the TLS record, capped) */
	__u8 more;    /* the TLS record is longer than what will be copied */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 data[PAYLOAD_MAX];
};

/* Referenced so that their BTF, and so their Go bindings, exist. */
const struct event *unused_event __attribute__((unused));
const struct payload_event *unused_payload_event __attribute__((unused));
const struct header *unused_header __attribute__((unused));
const enum outcome *unused_outcome __attribute__((unused));
const enum kind *unused_kind __attribute__((unused));
const enum stat *unused_stat __attribute__((unused));
const enum limit *unused_limit __attribute__((unused));

#endif
