/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Processes: execve's path and arguments, and exits (of threads, for their
 * records, and of processes, for user space's caches).
 */
#ifndef CALLSCOPE_PROCESS
#define CALLSCOPE_PROCESS

/*
 * The last thread of a process is exiting: tell user space, so that its
 * cache of process facts does not keep the dead. Only the tgid and start
 * time are sent; they are what the cache is keyed by.
 */
SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/*
	 * do_exit() decrements signal->live before this tracepoint fires: the
	 * last thread to leave sees 0, and so may another leaving at once.
	 */
	int live = BPF_CORE_READ(task, signal, live.counter);

	/* Every thread comes here as it exits: its last connect(2), if it
	 * failed before its SYN, is reported, and its record goes. */
	if (connect_hook) {
		struct pending *p = thread_pending(0);
		if (p && p->armed && release_hook)
			report_unsent(p, 0);
		if (p && !task_storage) {
			__u32 tid = (__u32)bpf_get_current_pid_tgid();
			bpf_map_delete_elem(&thread_pendings, &tid);
		}
	}
	if (live != 0)
		return 0;
	/* Of two threads that both saw 0, the first to claim the process
	 * reports its end. */
	struct exited who = {
	    .tgid = bpf_get_current_pid_tgid() >> 32,
	    .start = BPF_CORE_READ(task, group_leader, start_boottime),
	};
	__u8 one = 1;
	if (bpf_map_update_elem(&exited, &who, &one, BPF_NOEXIST))
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EXIT_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->h.kind = KIND_EXIT;
	e->caller.tgid = who.tgid;
	e->caller.task_start = who.start;
	e->h.ts_ns = bpf_ktime_get_boot_ns();
	submit(e);
	return 0;
}

/* tracefs: events/sched/sched_process_exec/format */
struct exec_ctx {
	__u64 common;
	__u32 filename; /* __data_loc: offset in the low 16 bits, length in the high */
	__s32 pid;
	__s32 old_pid;
};

/*
 * A process ran execve: send its path and arguments, so that a process
 * gone before user space could read /proc still has an executable and a
 * command line. The record holds the path (NUL-terminated) at data[0] and
 * the arguments at data[EXEC_PATH_MAX]; offset and want give their lengths.
 */
static __always_inline void fill_exec(struct exec_ctx *ctx, struct payload_event *e);

SEC("tracepoint/sched/sched_process_exec")
int process_exec(struct exec_ctx *ctx)
{
	struct payload_event *e = scratch_enter();
	if (!e) {
		count(STAT_EXEC_LOST);
		return 0;
	}
	fill_exec(ctx, e);
	scratch_exit();
	return 0;
}

static __always_inline void fill_exec(struct exec_ctx *ctx, struct payload_event *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	__builtin_memset(&e->ev, 0, sizeof(e->ev));
	fill_caller(&e->ev.caller);
	e->ev.h.ts_ns = e->ev.caller.start_ns;
	e->ev.h.kind = KIND_EXEC;
	e->ev.aux = BPF_CORE_READ(task, real_parent, tgid);

	long n = bpf_probe_read_kernel_str(e->data, EXEC_PATH_MAX, (void *)ctx + (ctx->filename & 0xffff));
	e->offset = n > 0 ? n : 0;

	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	__u64 args = end > start ? end - start : 0;
	e->more = args > EXEC_ARGS_MAX;
	if (args > EXEC_ARGS_MAX)
		args = EXEC_ARGS_MAX;
	__u64 copied = 0;
	if (args > 0) {
		/* Restated for the verifier, as in emit_payload. */
		__u64 len = args - 1;
		asm volatile("%[len] &= %[mask]" : [len] "+r"(len) : [mask] "i"(EXEC_ARGS_MAX - 1));
		len += 1;
		if (bpf_probe_read_user(e->data + EXEC_PATH_MAX, len, (void *)start) == 0)
			copied = len;
	}
	e->want = copied;
	e->len = EXEC_PATH_MAX + copied;
	e->proto = 0;

	/* copied is at most EXEC_ARGS_MAX: the record fits the scratch slot. */
	if (bpf_ringbuf_output(&events, e, sizeof(*e) - PAYLOAD_MAX + EXEC_PATH_MAX + copied, wakeup_flags()))
		count(STAT_EXEC_LOST);
}

#endif
