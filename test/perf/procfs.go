package perf

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports (getconf CLK_TCK).
const clockTicks = 100

// procCPU returns the user + system CPU time process pid has used.
func procCPU(pid int) (time.Duration, error) { return procTicks(pid, 11, 13) }

// procTreeCPU returns the user + system CPU time of process pid, of its
// children that have exited (cutime, cstime: the children it waited for)
// and of its running children, and their exited children. A server that
// forks a process per connection, as PostgreSQL does, is counted whole,
// connections that came and went included.
func procTreeCPU(pid int) (time.Duration, error) {
	// The children first: one that exits after being read is counted
	// twice (here and in pid's cutime) rather than not at all.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, fmt.Errorf("children of %d: %w", pid, err)
	}
	var sum time.Duration
	for _, f := range strings.Fields(string(b)) {
		child, err := strconv.Atoi(f)
		if err != nil {
			return 0, fmt.Errorf("children of %d: %w", pid, err)
		}
		d, err := procTicks(child, 11, 15)
		if err == nil { // it may have exited since
			sum += d
		}
	}
	d, err := procTicks(pid, 11, 15)
	return sum + d, err
}

// procTicks returns the sum of /proc/<pid>/stat's fields from..to-1
// (counted after the command name, from 0) as CPU time.
func procTicks(pid, from, to int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of %d: %w", pid, err)
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime, stime, cutime and cstime are fields 14 to 17, so 12th to
	// 15th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu of %d: no ')' in /proc/%d/stat", pid, pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < to {
		return 0, fmt.Errorf("cpu of %d: short /proc/%d/stat", pid, pid)
	}
	var ticks int64
	for _, s := range f[from:to] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu of %d: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// procRSS returns the resident set size (VmRSS) of process pid in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("rss of %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("rss of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("rss of %d: no VmRSS", pid)
}

// selfCPU returns the CPU time this process (the sink, the subscriber and
// the bookkeeping) has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// findProcess returns the pid of the process whose command line holds arg
// as one argument, or 0.
func findProcess(arg string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg {
				pid, _ := strconv.Atoi(filepath.Base(d))
				return pid
			}
		}
	}
	return 0
}

// machineBusy returns the CPU time the machine has been busy since boot,
// summed over cores, plus the time the hypervisor stole: /proc/stat's cpu
// line without idle and iowait (guest time is inside user). Interrupt time
// is counted because the kernel charges a process's system time for the
// ticks it spends in interrupts, as it does the machine's irq and softirq.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// procSwitches returns the context switches (voluntary and not) of every
// thread of process pid so far: how often its threads went to sleep or
// were preempted, a count of its wake-ups. Threads that exited are not
// counted (the Go runtime keeps its threads).
func procSwitches(pid int) (int64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/[0-9]*/status", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("context switches of %d: no tasks", pid)
	}
	var n int64
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited meanwhile
		}
		for line := range strings.Lines(string(b)) {
			for _, key := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if v, ok := strings.CutPrefix(line, key); ok {
					c, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					if err == nil {
						n += c
					}
				}
			}
		}
	}
	return n, nil
}
