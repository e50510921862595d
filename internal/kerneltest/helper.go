package kerneltest

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const helperEnv = "CALLSCOPE_TEST_HELPER"

// MaybeRunHelper turns the test binary into a helper process when it was
// started by Connector. Call it first in TestMain.
func MaybeRunHelper() {
	var err error
	switch os.Getenv(helperEnv) {
	case "connect":
		err = connectMain(os.Args[1:])
	case "tls":
		err = tlsMain()
	case "resolve":
		err = resolveMain()
	default:
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(0)
}

// runHelper runs the test binary as the helper mode, in cg and in the
// network namespace netns (a path under /var/run/netns; "" for this one),
// with env added to its environment, and returns its pid once it exited;
// its failure fails the test.
func runHelper(t testing.TB, mode string, cg *Cgroup, netns string, env ...string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	if netns != "" {
		// ip execs the helper once it has joined the namespace: the pid
		// stays the same.
		cmd = exec.Command("ip", "netns", "exec", filepath.Base(netns), os.Args[0])
	}
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	InCgroup(cmd, cg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s helper: %v: %s", mode, err, out)
	}
	return cmd.Process.Pid
}

// Connect describes what a helper process does: connect to each address in
// turn, Repeat times, closing each socket at once.
type Connect struct {
	Addrs  []netip.AddrPort
	Repeat int    // default 1
	SynCnt int    // TCP_SYNCNT, to time out after SynCnt retries; 0 keeps the default
	NetNS  string // a network namespace to join first (a path under /var/run/netns)
	Cgroup *Cgroup
	// Linger keeps the process alive after its connects until its stdin is
	// closed, so that /proc can still be read.
	Linger bool
	// User, if set, is the uid and gid the process takes (real, effective
	// and saved, with no supplementary groups) before its connects.
	User *User
	// Attempts is how many times connect(2) is called on each socket before
	// it is closed (default 1): after a failure before the SYN, each call
	// is a new attempt.
	Attempts int
	// Poll makes each connect nonblocking, then, once the socket is
	// writable, calls connect(2) again for the result, as some callers
	// do instead of asking SO_ERROR.
	Poll bool
	// Concurrent starts every connect (each address, Repeat times) at
	// once, nonblocking, then waits for them all; stdout has one line per
	// connect.
	Concurrent bool
	// TTY gives the process a pseudo-terminal of its own as its
	// controlling terminal, as an interactive session has.
	TTY bool
	// LoginUID, if set, is written to /proc/self/loginuid before the
	// connects, as a login (pam_loginuid) does.
	LoginUID *uint32
	// Send is written on each socket once it is connected, before it is
	// closed.
	Send string
}

// User is a uid and a gid.
type User struct{ UID, GID int }

// Command returns the helper process for c; its stdout has one line per
// connect: the address and the errno name, or "ok".
func (c Connect) Command(t testing.TB) *exec.Cmd {
	t.Helper()
	args := make([]string, 0, len(c.Addrs))
	for _, a := range c.Addrs {
		args = append(args, a.String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv+"=connect",
		"CALLSCOPE_TEST_REPEAT="+strconv.Itoa(max(c.Repeat, 1)),
		"CALLSCOPE_TEST_SYNCNT="+strconv.Itoa(c.SynCnt),
		"CALLSCOPE_TEST_NETNS="+c.NetNS,
		"CALLSCOPE_TEST_LINGER="+strconv.FormatBool(c.Linger),
		"CALLSCOPE_TEST_ATTEMPTS="+strconv.Itoa(max(c.Attempts, 1)),
		"CALLSCOPE_TEST_POLL="+strconv.FormatBool(c.Poll),
		"CALLSCOPE_TEST_CONCURRENT="+strconv.FormatBool(c.Concurrent),
		"CALLSCOPE_TEST_SEND="+c.Send)
	if c.LoginUID != nil {
		cmd.Env = append(cmd.Env, fmt.Sprintf("CALLSCOPE_TEST_LOGINUID=%d", *c.LoginUID))
	}
	if c.TTY {
		withTerminal(t, cmd)
	}
	if c.User != nil {
		cmd.Env = append(cmd.Env, fmt.Sprintf("CALLSCOPE_TEST_USER=%d:%d", c.User.UID, c.User.GID))
	}
	InCgroup(cmd, c.Cgroup)
	return cmd
}

// Run runs the helper and returns its per-connect results.
func (c Connect) Run(t testing.TB) (pid int, results []string) {
	t.Helper()
	cmd := c.Command(t)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("connect helper: %v: %s%s", err, out, stderr)
	}
	return cmd.Process.Pid, strings.Fields(strings.ReplaceAll(string(out), "\n", " "))
}

func connectMain(args []string) error {
	runtime.LockOSThread() // setns applies to this thread only
	if ns := os.Getenv("CALLSCOPE_TEST_NETNS"); ns != "" {
		fd, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns: %w", err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns: %w", err)
		}
	}
	if u := os.Getenv("CALLSCOPE_TEST_USER"); u != "" {
		var uid, gid int
		if _, err := fmt.Sscanf(u, "%d:%d", &uid, &gid); err != nil {
			return fmt.Errorf("CALLSCOPE_TEST_USER %q: %w", u, err)
		}
		// The groups first: without root, the uid could no longer change them.
		if err := unix.Setgroups(nil); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := unix.Setresgid(gid, gid, gid); err != nil {
			return fmt.Errorf("setresgid: %w", err)
		}
		if err := unix.Setresuid(uid, uid, uid); err != nil {
			return fmt.Errorf("setresuid: %w", err)
		}
	}
	if u := os.Getenv("CALLSCOPE_TEST_LOGINUID"); u != "" {
		// The kernel takes the write only from the task the file is of, and
		// /proc/self is the thread group's leader, which this goroutine's
		// locked thread need not be: the calling thread's own file it is.
		if err := os.WriteFile("/proc/thread-self/loginuid", []byte(u), 0); err != nil {
			return fmt.Errorf("set the login uid: %w", err)
		}
	}
	repeat, _ := strconv.Atoi(os.Getenv("CALLSCOPE_TEST_REPEAT"))
	syncnt, _ := strconv.Atoi(os.Getenv("CALLSCOPE_TEST_SYNCNT"))
	how := connectHow{syncnt: syncnt, poll: os.Getenv("CALLSCOPE_TEST_POLL") == "true", send: os.Getenv("CALLSCOPE_TEST_SEND")}
	how.attempts, _ = strconv.Atoi(os.Getenv("CALLSCOPE_TEST_ATTEMPTS"))
	var out strings.Builder
	if os.Getenv("CALLSCOPE_TEST_CONCURRENT") == "true" {
		if err := connectConcurrently(args, max(repeat, 1), syncnt, &out); err != nil {
			return err
		}
		_, err := os.Stdout.WriteString(out.String())
		return err
	}
	for _, a := range args {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return err
		}
		for range max(repeat, 1) {
			res := "ok"
			if err := connectOnce(ap, how); err != nil {
				if errno, ok := err.(unix.Errno); ok {
					res = unix.ErrnoName(errno)
				} else {
					return err
				}
			}
			if repeat <= 1 {
				fmt.Fprintf(&out, "%s=%s\n", ap, res)
			} else if res != "ok" {
				return fmt.Errorf("connect %s: %s", ap, res)
			}
		}
	}
	if _, err := os.Stdout.WriteString(out.String()); err != nil {
		return err
	}
	if os.Getenv("CALLSCOPE_TEST_LINGER") == "true" {
		os.Stdout.Close() // tells the parent the connects are done
		io.Copy(io.Discard, os.Stdin)
	}
	return nil
}

// connectConcurrently starts repeat nonblocking connects to each address,
// then waits for them all and writes each one's result to out.
func connectConcurrently(args []string, repeat, syncnt int, out *strings.Builder) error {
	type conn struct {
		ap netip.AddrPort
		fd int
	}
	var conns []conn
	defer func() {
		for _, c := range conns {
			unix.Close(c.fd)
		}
	}()
	for _, a := range args {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return err
		}
		for range repeat {
			fd, sa, err := tcpSocket(ap, unix.SOCK_NONBLOCK, syncnt)
			if err != nil {
				return err
			}
			conns = append(conns, conn{ap, fd})
			if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
				return fmt.Errorf("connect %s: %w", ap, err)
			}
		}
	}
	pending := len(conns)
	done := make([]bool, len(conns))
	for pending > 0 {
		var pfds []unix.PollFd
		var idx []int
		for i, c := range conns {
			if !done[i] {
				pfds = append(pfds, unix.PollFd{Fd: int32(c.fd), Events: unix.POLLOUT})
				idx = append(idx, i)
			}
		}
		if _, err := unix.Poll(pfds, 60_000); err != nil && err != unix.EINTR {
			return fmt.Errorf("poll: %w", err)
		}
		for j, p := range pfds {
			if p.Revents == 0 {
				continue
			}
			done[idx[j]] = true
			pending--
		}
	}
	for _, c := range conns {
		res := "ok"
		if v, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
			return fmt.Errorf("SO_ERROR: %w", err)
		} else if v != 0 {
			res = unix.ErrnoName(unix.Errno(v))
		}
		fmt.Fprintf(out, "%s=%s\n", c.ap, res)
	}
	return nil
}

// tcpSocket opens a TCP socket for ap, with flags added to its type and
// TCP_SYNCNT set when syncnt is not 0.
func tcpSocket(ap netip.AddrPort, flags, syncnt int) (int, unix.Sockaddr, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|flags, unix.IPPROTO_TCP)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	if syncnt > 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_SYNCNT, syncnt); err != nil {
			unix.Close(fd)
			return -1, nil, fmt.Errorf("TCP_SYNCNT: %w", err)
		}
	}
	return fd, sa, nil
}

type connectHow struct {
	syncnt   int
	attempts int
	poll     bool
	send     string
}

// connectOnce connects one socket, as how says, and closes it. The error
// is the last attempt's.
func connectOnce(ap netip.AddrPort, how connectHow) error {
	flags := 0
	if how.poll {
		flags = unix.SOCK_NONBLOCK
	}
	fd, sa, err := tcpSocket(ap, flags, how.syncnt)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for range max(how.attempts, 1) {
		err = unix.Connect(fd, sa)
	}
	if how.poll && err == unix.EINPROGRESS {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, perr := unix.Poll(pfd, 10_000); perr != nil {
			return fmt.Errorf("poll: %w", perr)
		}
		err = unix.Connect(fd, sa)
		if err == unix.EISCONN {
			err = nil
		}
	}
	if err == nil && how.send != "" {
		if _, werr := unix.Write(fd, []byte(how.send)); werr != nil {
			return fmt.Errorf("write: %w", werr)
		}
	}
	return err
}
