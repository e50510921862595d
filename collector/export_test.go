package collector

import "github.com/cilium/ebpf"

// ProgramIDs returns the kernel ids of the loaded programs and maps, so a
// test can check they are gone after Close.
func (c *Collector) ObjectIDs() (progs []ebpf.ProgramID, maps []ebpf.MapID) {
	for _, p := range []*ebpf.Program{c.objs.Connect4, c.objs.Connect6, c.objs.SockRelease, c.objs.SockCreate, c.objs.SockOps, c.objs.Egress, c.objs.Ingress, c.objs.ConnectExit, c.objs.ProcessExit, c.objs.ProcessExec} {
		info, err := p.Info()
		if err != nil {
			panic(err)
		}
		id, _ := info.ID()
		progs = append(progs, id)
	}
	for _, m := range []*ebpf.Map{c.objs.Events, c.objs.Hellos, c.objs.Pendings, c.objs.ThreadPendings, c.objs.LostStarts, c.objs.UdpNetns, c.objs.Exited, c.objs.Stats, c.objs.Scratch, c.objs.ScratchDepth} {
		info, err := m.Info()
		if err != nil {
			panic(err)
		}
		id, _ := info.ID()
		maps = append(maps, id)
	}
	return progs, maps
}

// RecordSize is the size of a kernel event record.
var RecordSize = recordSize

// Sweep runs the in-flight sweep now instead of at its next tick.
func (c *Collector) Sweep() { c.sweepNow.Store(true) }
