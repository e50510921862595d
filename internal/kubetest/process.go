package kubetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// launcher starts the servers from one goroutine locked to its OS thread,
// kept until the control plane stops. Each server gets SIGKILL when that
// thread ends (Pdeathsig), which is also when the test binary dies, so a
// test that times out or panics leaves no etcd or API server behind.
type launcher struct {
	reqs chan launchReq
	quit chan struct{}
}

type launchReq struct {
	cmd *exec.Cmd
	res chan error
}

func newLauncher() *launcher {
	l := &launcher{reqs: make(chan launchReq), quit: make(chan struct{})}
	go func() {
		// Never unlocked: when this goroutine returns, its thread exits.
		runtime.LockOSThread()
		for {
			select {
			case r := <-l.reqs:
				r.res <- r.cmd.Start()
			case <-l.quit:
				return
			}
		}
	}()
	return l
}

func (l *launcher) close() { close(l.quit) }

// process is a server the launcher started.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// start runs bin with args, its output going to logPath.
func (l *launcher) start(name, logPath, bin string, args ...string) (*process, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	res := make(chan error)
	l.reqs <- launchReq{cmd: cmd, res: res}
	if err := <-res; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and waits, then SIGKILL.
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil // exited already; its log says why
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %v of SIGTERM", p.name, grace)
	}
}

// logTail is the end of the server's output, for errors.
func (p *process) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(%s log: %v)", p.name, err)
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return fmt.Sprintf("--- %s log (end) ---\n%s", p.name, b)
}
