/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel-internal types callscope reads, declared with
 * preserve_access_index so that clang records CO-RE relocations and the
 * loader fixes each field offset against the running kernel's BTF. Only the
 * fields used are listed; their names, not their positions, must match.
 */
#ifndef CALLSCOPE_KERNEL_H
#define CALLSCOPE_KERNEL_H

#include <linux/types.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	possible_net_t skc_net;
	unsigned char skc_state;
};

/* include/linux/net.h: how far connect(2) got on a socket */
typedef enum {
	SS_FREE = 0,
	SS_UNCONNECTED,
	SS_CONNECTING,
	SS_CONNECTED,
	SS_DISCONNECTING,
} socket_state;

struct socket {
	socket_state state;
};

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	struct socket *sk_socket;
};

struct sk_buff {
	struct sock *sk;
};

/* RFC 4898 counters, which the kernel updates before the cgroup_skb hooks see
 * a segment sent and after they see one received, and the sock_ops callback
 * flags, whose STATE flag marks a tracked connect. */
struct tcp_sock {
	__u64 bytes_sent;
	__u32 segs_in;
	__u32 data_segs_in;
	__u32 data_segs_out;
	__u8 bpf_sock_ops_cb_flags;
};

typedef struct {
	int counter;
} atomic_t;

struct tty_struct;

struct signal_struct {
	atomic_t live;
	struct tty_struct *tty; /* the controlling terminal */
};

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
};

typedef struct {
	unsigned int val;
} kuid_t;

typedef struct {
	unsigned int val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
};

struct nsproxy {
	struct net *net_ns;
};

struct task_struct {
	struct nsproxy *nsproxy;
	int pid;
	int tgid;
	char comm[16];
	const struct cred *cred;
	__u64 start_boottime;
	struct task_struct *group_leader;
	struct task_struct *real_parent;
	struct signal_struct *signal;
	struct mm_struct *mm;
	kuid_t loginuid; /* CONFIG_AUDIT only */
};

#pragma clang attribute pop

#endif
