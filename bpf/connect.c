// SPDX-License-Identifier: GPL-2.0
/*
 * Outbound TCP connects, IPv4 and IPv6, with their outcome.
 *
 * Identity is taken where the caller is the current task: sock_ops'
 * TCP_CONNECT callback runs inside connect(2), as the SYN is built, and
 * sends it with the addresses in a start record. The outcome arrives later,
 * in softirq context, where the current task is whoever happened to be
 * running: sock_ops sends it in a small record of its own, with the socket
 * cookie, and user space joins the two. ACTIVE_ESTABLISHED reports success,
 * and the STATE callback (switched on per socket at TCP_CONNECT, which also
 * marks the socket as tracked) a socket that leaves the handshake otherwise,
 * with sk_err telling refused from timed out from unreachable. The ring
 * buffer keeps the order in which records were reserved, so a start always
 * comes before its outcome. No hash map holds the connect on the way: a
 * hash insert, lookup and delete per connect cost more than both records.
 *
 * cgroup/connect4 and connect6, which see every TCP connect(2) first, as
 * the caller on every kernel, arm a per-thread record of the caller and the
 * destination: TCP_CONNECT, inside the same connect(2), takes the caller
 * from there for its start record (Linux 5.15 and 6.1 do not let sock_ops
 * read the current task) and disarms it. A connect that fails inside the
 * syscall, before any SYN is sent (no route, no free port, a local policy),
 * leaves its record armed, and is reported when the thread releases that
 * socket (cgroup/sock_release), connects again, or exits. The kernel keeps
 * no error for such a failure; only the syscall-exit tracepoint sees it,
 * and that tracepoint is opt-in (syscall_errors): while any syscall
 * tracepoint is attached, every syscall of every process on the node takes
 * the kernel's slower path. With it, the failure is reported at the
 * syscall's exit, with its error.
 *
 * cgroup_skb/egress copies a tracked connection's first data when it is a
 * TLS ClientHello, also when it spans segments, and cgroup_skb/ingress then
 * the server's first bytes (the ServerHello). Only a connection that sent a
 * ClientHello gets an entry, in a second map (an LRU); user space gives its
 * records the caller of the connect with the same cookie. Which packets are
 * worth a look the socket itself tells (the flag TCP_CONNECT sets, and its
 * RFC 4898 counters), so other traffic costs no lookup. The same ingress
 * program copies DNS answers (source port 53, UDP and TCP).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kernel.h"

char LICENSE[] SEC("license") = "GPL";

/* In this order: each part uses what the ones before it declare. */
#include "records.h"
#include "maps.h"
#include "common.h"
#include "packet.h"
#include "connect.h"
#include "payload.h"
#include "process.h"
