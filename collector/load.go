// Loading the programs as the kernel allows them, and attaching them.

package collector

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func (c *Collector) load() error {
	spec, err := loadConnect()
	if err != nil {
		return fmt.Errorf("load BPF object: %w", err)
	}
	spec.Maps["events"].MaxEntries = uint32(c.cfg.RingBufferBytes)
	spec.Maps["hellos"].MaxEntries = uint32(c.cfg.MaxInFlight)
	if c.caps.taskStorage {
		spec.Maps["thread_pendings"].MaxEntries = 1 // not used
	}
	for name, on := range map[string]bool{
		"connect_hook":    c.caps.connectHook,
		"task_storage":    c.caps.taskStorage,
		"release_hook":    c.caps.releaseHook,
		"sockops_current": c.caps.sockopsCurrent,
		"syscall_errors":  c.caps.releaseHook && c.cfg.SyscallErrors,
		"udp_netns_hook":  c.caps.udpNetns,
	} {
		if err := spec.Variables[name].Set(on); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if err := spec.Variables["wakeup_bytes"].Set(uint64(c.cfg.WakeupBytes)); err != nil {
		return fmt.Errorf("set wakeup threshold: %w", err)
	}
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load BPF programs: %+v", ve)
		}
		return fmt.Errorf("load BPF programs: %w", err)
	}
	c.tlsPorts = newPortSet(c.cfg.TLSPorts)
	for i, bits := range c.tlsPorts {
		if bits == 0 {
			continue
		}
		if err := c.objs.TlsPorts.Update(uint32(i), bits, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("set TLS ports: %w", err)
		}
	}
	return nil
}

func (c *Collector) attach() error {
	type cgroupProg struct {
		name string
		typ  ebpf.AttachType
		prog *ebpf.Program
	}
	type tracepoint struct {
		group, name string
		prog        *ebpf.Program
	}
	// The connect hooks go first, so that sock_ops finds their record on
	// every socket connected once it is attached.
	var progs []cgroupProg
	if c.caps.connectHook {
		// connect4 and connect6 arm each thread's record of the caller,
		// for TCP_CONNECT, which sock_release reports if no SYN went
		// out.
		progs = append(progs,
			cgroupProg{"connect4", ebpf.AttachCGroupInet4Connect, c.objs.Connect4},
			cgroupProg{"connect6", ebpf.AttachCGroupInet6Connect, c.objs.Connect6})
	}
	if c.caps.releaseHook {
		progs = append(progs, cgroupProg{"sock_release", ebpf.AttachCgroupInetSockRelease, c.objs.SockRelease})
	}
	if c.caps.udpNetns {
		// Before ingress, so that a resolver's socket made once it runs
		// has its namespace kept.
		progs = append(progs, cgroupProg{"sock_create", ebpf.AttachCGroupInetSockCreate, c.objs.SockCreate})
	}
	progs = append(progs,
		cgroupProg{"sock_ops", ebpf.AttachCGroupSockOps, c.objs.SockOps},
		cgroupProg{"egress", ebpf.AttachCGroupInetEgress, c.objs.Egress},
		cgroupProg{"ingress", ebpf.AttachCGroupInetIngress, c.objs.Ingress})
	tracepoints := []tracepoint{
		{"sched", "sched_process_exit", c.objs.ProcessExit},
		{"sched", "sched_process_exec", c.objs.ProcessExec},
	}
	if c.caps.releaseHook && c.cfg.SyscallErrors {
		tracepoints = append(tracepoints, tracepoint{"syscalls", "sys_exit_connect", c.objs.ConnectExit})
	}
	for _, a := range progs {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: c.cfg.CgroupRoot, Attach: a.typ, Program: a.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", a.name, c.cfg.CgroupRoot, err)
		}
		c.links = append(c.links, l)
	}
	for _, tp := range tracepoints {
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog, nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint %s/%s: %w", tp.group, tp.name, err)
		}
		c.links = append(c.links, l)
	}
	return nil
}

// ProgramStats is what the kernel counted of one program.
type ProgramStats struct {
	Name    string
	Runs    uint64
	RunTime time.Duration
}

// Programs returns the kernel's counts of each program's runs and run
// time: zeros unless Config.BPFStats is set (or the kernel.bpf_stats_enabled
// sysctl is on).
func (c *Collector) Programs() []ProgramStats {
	c.objsMu.RLock()
	defer c.objsMu.RUnlock()
	if c.released {
		return nil
	}
	var out []ProgramStats
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"connect4", c.objs.Connect4}, {"connect6", c.objs.Connect6}, {"sock_release", c.objs.SockRelease}, {"sock_create", c.objs.SockCreate}, {"sock_ops", c.objs.SockOps},
		{"egress", c.objs.Egress}, {"ingress", c.objs.Ingress},
		{"connect_exit", c.objs.ConnectExit}, {"process_exit", c.objs.ProcessExit}, {"process_exec", c.objs.ProcessExec},
	} {
		if p.prog == nil {
			continue
		}
		st, err := p.prog.Stats()
		if err != nil {
			continue
		}
		out = append(out, ProgramStats{Name: p.name, Runs: st.RunCount, RunTime: st.Runtime})
	}
	return out
}

// Features returns what the kernel let the programs do.
func (c *Collector) Features() []Feature { return c.features }
