// Command floor attaches programs that do next to nothing at the hooks
// callscope's connect path uses, to one cgroup, and holds them until it is
// interrupted. A workload run in that cgroup pays the kernel's dispatch of
// those hooks and nothing of callscope's work: the least any agent built on
// them costs. bench/paired.sh runs it beside callscope (FLOOR=1).
//
//	floor -cgroup DIR [-records]
//
// What is attached, as callscope attaches it by default:
//   - sock_ops, which turns the socket's STATE callback on at TCP_CONNECT,
//     as callscope does to see a connect's outcome (two more callbacks per
//     connect);
//   - cgroup_skb ingress and egress, which let every packet through;
//   - cgroup connect4, connect6 and sock_release, which allow everything.
//
// With -records, sock_ops also writes a 24-byte record to a ring buffer at
// TCP_CONNECT and at ESTABLISHED, without waking the reader, which drains
// it every 50 ms: the least a program can do to report a connect and its
// outcome.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// From include/uapi/linux/bpf.h.
const (
	opTCPConnect        = 3  // BPF_SOCK_OPS_TCP_CONNECT_CB
	opActiveEstablished = 4  // BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
	stateCBFlag         = 4  // BPF_SOCK_OPS_STATE_CB_FLAG
	cbFlagsOffset       = 84 // offsetof(struct bpf_sock_ops, bpf_sock_ops_cb_flags)
	ringbufNoWakeup     = 1  // BPF_RB_NO_WAKEUP
	recordBytes         = 24
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run() error {
	cgroup := flag.String("cgroup", "", "cgroup2 `directory` to attach to")
	records := flag.Bool("records", false, "write a record at each connect's start and establishment")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *cgroup == "" {
		flag.Usage()
		return errors.New("-cgroup is required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "floor")
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}

	var events *ebpf.Map
	if *records {
		var err error
		events, err = ebpf.NewMap(&ebpf.MapSpec{Name: "floor_events", Type: ebpf.RingBuf, MaxEntries: 4 << 20})
		if err != nil {
			return fmt.Errorf("create ring buffer: %w", err)
		}
		defer events.Close()
	}

	progs := []struct {
		name   string
		typ    ebpf.ProgramType
		attach ebpf.AttachType
		insns  asm.Instructions
	}{
		{"floor_sock_ops", ebpf.SockOps, ebpf.AttachCGroupSockOps, sockOps(events)},
		{"floor_ingress", ebpf.CGroupSKB, ebpf.AttachCGroupInetIngress, pass()},
		{"floor_egress", ebpf.CGroupSKB, ebpf.AttachCGroupInetEgress, pass()},
		{"floor_connect4", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect, pass()},
		{"floor_connect6", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect, pass()},
		{"floor_release", ebpf.CGroupSock, ebpf.AttachCgroupInetSockRelease, pass()},
	}
	for _, p := range progs {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: p.name, Type: p.typ, AttachType: p.attach, Instructions: p.insns, License: "GPL",
		})
		if err != nil {
			return fmt.Errorf("load %s: %+v", p.name, err)
		}
		defer prog.Close()
		l, err := link.AttachCgroup(link.CgroupOptions{Path: *cgroup, Attach: p.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s: %w", p.name, err)
		}
		defer l.Close()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, unix.SIGTERM)
	log.Info("attached", "cgroup", *cgroup, "records", *records)
	if events == nil {
		<-stop
		return nil
	}

	rd, err := ringbuf.NewReader(events)
	if err != nil {
		return fmt.Errorf("open ring buffer: %w", err)
	}
	defer rd.Close()
	n := 0
	var rec ringbuf.Record
	for {
		select {
		case <-stop:
			log.Info("detaching", "records", n)
			return nil
		default:
		}
		rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			n++
		case errors.Is(err, os.ErrDeadlineExceeded):
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
	}
}

// pass lets every packet, connect and release through.
func pass() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}
}

// sockOps turns the STATE callback on at TCP_CONNECT, and with events,
// writes a record there and at ESTABLISHED.
func sockOps(events *ebpf.Map) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R6, 0, asm.Word), // skops->op
		asm.JEq.Imm(asm.R7, opTCPConnect, "connect"),
	}
	if events != nil {
		insns = append(insns, asm.JEq.Imm(asm.R7, opActiveEstablished, "established"))
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 1).WithSymbol("out"), asm.Return())
	// Add the flag to the socket's, as the agent does, so as not to take
	// away what another program set.
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R6, cbFlagsOffset, asm.Word).WithSymbol("connect"),
		asm.Or.Imm(asm.R2, stateCBFlag),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnSockOpsCbFlagsSet.Call(),
	)
	if events == nil {
		return append(insns, asm.Ja.Label("out"))
	}
	insns = append(insns, record(events, "")...)
	return append(insns, record(events, "established")...)
}

// record writes a zeroed record and jumps to "out"; label names its first
// instruction.
func record(events *ebpf.Map, label string) asm.Instructions {
	first := asm.LoadMapPtr(asm.R1, events.FD())
	if label != "" {
		first = first.WithSymbol(label)
	}
	return asm.Instructions{
		first,
		asm.Mov.Imm(asm.R2, recordBytes),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
		asm.StoreMem(asm.R0, 16, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R2, ringbufNoWakeup),
		asm.FnRingbufSubmit.Call(),
		asm.Ja.Label("out"),
	}
}
