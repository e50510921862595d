package collector

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
)

// Feature is one thing the programs report only where the kernel allows
// it. Start probes the kernel; a feature it lacks is left out, said in the
// log, and the rest runs.
type Feature struct {
	Name string // bounded: a metric label
	// Available is whether the feature runs: the kernel has what it needs
	// and, for an opt-in feature, it was asked for.
	Available bool
	// Needs says what the kernel must offer.
	Needs string
	// Without says what is not reported while the feature is off.
	Without string
}

// The features, by name.
const (
	// FeatureUnsent reports connects that fail inside connect(2), before
	// any SYN is sent (no route, no free port, a local policy).
	FeatureUnsent = "unsent_connects"
	// FeatureUnsentErrors gives those connects their error. Opt-in
	// (Config.SyscallErrors): it takes a syscall tracepoint.
	FeatureUnsentErrors = "unsent_connect_errors"
	// FeatureDNSNetNS tells DNS answers apart by the network namespace
	// that received them.
	FeatureDNSNetNS = "dns_netns"
)

// kernelCaps is what the programs may do on the running kernel, probed
// helper by helper: the same object then loads everywhere, with the
// constants that switch its paths set to match.
type kernelCaps struct {
	// connectHook: cgroup/connect4/6 may read the current task, and
	// sock_ops the current task's thread id, to hand the caller on in a
	// per-thread record.
	connectHook bool
	// taskStorage: the per-thread records may be in task storage, which
	// every program that reads them may use; else they are in a hash by
	// thread id.
	taskStorage bool
	// releaseHook: cgroup/sock_release may read those records.
	releaseHook bool
	// sockopsCurrent: sock_ops may read the current task. Linux 5.15 and
	// 6.1 do not allow it; callers then come from connect4/6 only.
	sockopsCurrent bool
	// kernCtx: the bpf_cast_to_kern_ctx kfunc (Linux 6.3), through which
	// cgroup_skb reads the receiving socket's network namespace.
	kernCtx bool
	// udpNetns: without it, cgroup/sock_create may keep each UDP socket's
	// network namespace in socket storage, for cgroup_skb to read.
	udpNetns bool
}

func probeCaps() (kernelCaps, error) {
	var firstErr error
	have := func(pt ebpf.ProgramType, fns ...asm.BuiltinFunc) bool {
		for _, fn := range fns {
			err := features.HaveProgramHelper(pt, fn)
			if err == nil {
				continue
			}
			if !errors.Is(err, ebpf.ErrNotSupported) && firstErr == nil {
				firstErr = fmt.Errorf("probe %v for %v: %w", pt, fn, err)
			}
			return false
		}
		return true
	}
	var k kernelCaps
	k.connectHook = have(ebpf.CGroupSockAddr, asm.FnGetCurrentPidTgid, asm.FnGetCurrentTaskBtf,
		asm.FnGetCurrentCgroupId, asm.FnSkcToTcpSock, asm.FnGetSocketCookie) &&
		have(ebpf.SockOps, asm.FnGetCurrentTaskBtf)
	k.taskStorage = have(ebpf.CGroupSockAddr, asm.FnTaskStorageGet) && have(ebpf.SockOps, asm.FnTaskStorageGet) &&
		have(ebpf.CGroupSock, asm.FnTaskStorageGet) && have(ebpf.TracePoint, asm.FnTaskStorageGet)
	k.releaseHook = k.connectHook && have(ebpf.CGroupSock, asm.FnGetCurrentTaskBtf, asm.FnGetSocketCookie, asm.FnRingbufReserve)
	k.sockopsCurrent = have(ebpf.SockOps, asm.FnGetCurrentPidTgid, asm.FnGetCurrentTaskBtf, asm.FnGetCurrentCgroupId)
	if firstErr != nil {
		return k, firstErr
	}
	switch err := haveKfunc("bpf_cast_to_kern_ctx"); {
	case err == nil:
		k.kernCtx = true
	case !errors.Is(err, ebpf.ErrNotSupported):
		return k, err
	default:
		k.udpNetns = have(ebpf.CGroupSock, asm.FnSkStorageGet, asm.FnGetCurrentTaskBtf) &&
			have(ebpf.CGroupSKB, asm.FnSkStorageGet, asm.FnSkFullsock, asm.FnSkcToTcpSock)
		if firstErr != nil {
			return k, firstErr
		}
	}
	if !k.connectHook && !k.sockopsCurrent {
		return k, fmt.Errorf("%w: the kernel lets no program that sees a connect read its caller "+
			"(cgroup/connect4 with bpf_get_current_task_btf, or sock_ops with bpf_get_current_pid_tgid)", ErrUnsupported)
	}
	return k, nil
}

// features says what k lets the programs report. syscallErrors is whether
// the opt-in FeatureUnsentErrors was asked for.
func (k kernelCaps) features(syscallErrors bool) []Feature {
	return []Feature{
		{FeatureUnsent, k.releaseHook,
			"cgroup/connect4 and cgroup/sock_release programs that read the current task (Linux 5.15 has them)",
			"connects that fail inside connect(2), before a SYN is sent (no route, no free port, a local policy)"},
		{FeatureUnsentErrors, k.releaseHook && syscallErrors,
			"--syscall-errors, the sys_exit_connect tracepoint, and unsent_connects",
			"the error of a connect that failed before its SYN: its outcome is failed, without error"},
		{FeatureDNSNetNS, k.kernCtx || k.udpNetns,
			"the bpf_cast_to_kern_ctx kfunc (Linux 6.3), or cgroup/sock_create with socket storage",
			"the network namespace of a DNS answer: names learnt in one namespace serve all"},
	}
}

func haveKfunc(name string) error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); errors.Is(err, btf.ErrNotFound) {
		return fmt.Errorf("kfunc %s: %w", name, ebpf.ErrNotSupported)
	} else if err != nil {
		return fmt.Errorf("kfunc %s: %w", name, err)
	}
	return nil
}
