// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Errors a user meets before any event flows. They are wrapped with details;
// test with errors.Is.
var (
	ErrPrivileges  = errors.New("not enough privileges")
	ErrNoBTF       = errors.New("no kernel BTF")
	ErrMissingHook = errors.New("tracepoint missing on this kernel")
	ErrOldKernel   = errors.New("kernel too old")
)

// checkKernel fails early, with what is missing, on kernels older than the
// oldest tcpstate supports (Linux 5.10): the BPF ring buffer (5.8) is what
// it cannot do without and has no BTF to tell. (BTF tracing programs, 5.5, are
// not probed here: the library's probe attaches fentry, which kernels in
// lockdown refuse; the tracepoints' BTF and the load tell instead.)
func checkKernel() error {
	if err := features.HaveMapType(ebpf.RingBuf); errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("%w: no BPF ring buffer (Linux 5.8) on Linux %s; tcpstate needs Linux 5.10 or later", ErrOldKernel, kernelRelease())
	}
	return nil
}

// kernelRelease is `uname -r`.
func kernelRelease() string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return unix.ByteSliceToString(uts.Release[:])
}

// DefaultKernelBTF is where the running kernel publishes its types.
const DefaultKernelBTF = "/sys/kernel/btf/vmlinux"

// Capability numbers (include/uapi/linux/capability.h).
const (
	capDacReadSearch = 2
	capSysPtrace     = 19
	capSysAdmin      = 21
	capSyslog        = 34
	capPerfmon       = 38
	capBPF           = 39
)

// privilegeWarnings names, for a process that may trace, each capability it
// lacks and what that costs (root has them all).
func privilegeWarnings() []string {
	eff, err := effectiveCaps()
	if err != nil {
		return nil
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	var w []string
	if !has(capSysAdmin) {
		w = append(w, "no CAP_SYS_ADMIN: the start-up walk reads only tcpstate's own network namespace (entering others needs it)")
	}
	if !has(capSyslog) {
		w = append(w, "no CAP_SYSLOG: /proc/kallsyms hides kernel addresses, so TIME_WAIT, orphaned FIN_WAIT2 and keepalive timers are not followed")
	}
	if !has(capSysPtrace) && !has(capDacReadSearch) {
		w = append(w, "no CAP_SYS_PTRACE (or CAP_DAC_READ_SEARCH): sockets older than tcpstate held by other users' processes stay unnamed (/proc/PID/fd)")
	}
	return w
}

// checkBTFFile refuses, in a privileged run started by someone else (a
// binary with file capabilities: the kernel marks such an exec secure), a
// BTF file that root does not own: whoever wrote it would choose what the
// tracer believes about kernel memory.
func checkBTFFile(path string) error {
	if path == "" || !secureExec() {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil // loadKernelTypes names the file
	}
	if st.Uid != 0 || st.Mode&0o022 != 0 {
		return fmt.Errorf("%w: --btf %s: in a run with file capabilities only a file owned by root and writable by no one else is read", ErrPrivileges, path)
	}
	return nil
}

// secureExec reports whether the kernel marked this exec secure (AT_SECURE:
// setuid, setgid or file capabilities).
func secureExec() bool {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return true // when in doubt, careful
	}
	const atSecure = 23
	for i := 0; i+16 <= len(b); i += 16 {
		k, v := binary.NativeEndian.Uint64(b[i:]), binary.NativeEndian.Uint64(b[i+8:])
		if k == atSecure {
			return v != 0
		}
		if k == 0 {
			break
		}
	}
	return false
}

// CheckPrivileges tells whether this process may load and attach tracing
// programs: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN.
func CheckPrivileges() error {
	eff, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	return fmt.Errorf("%w: tracing needs root, or CAP_BPF and CAP_PERFMON (missing %s); run it with sudo",
		ErrPrivileges, strings.Join(missing, " and "))
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// loadKernelTypes reads the kernel's BTF from path, or with "" the running
// kernel's through cache (which the loads share).
func loadKernelTypes(path string, cache *btf.Cache) (*btf.Spec, error) {
	given := path != ""
	if !given {
		path = DefaultKernelBTF
	}
	var spec *btf.Spec
	var err error
	if given {
		spec, err = btf.LoadSpec(path)
	} else if _, err = os.Stat(path); err == nil {
		spec, err = cache.Kernel()
	}
	switch {
	case errors.Is(err, fs.ErrNotExist) && given:
		return nil, fmt.Errorf("%w: --btf %s does not exist", ErrNoBTF, path)
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: %s does not exist; tcpstate needs a kernel built with CONFIG_DEBUG_INFO_BTF=y "+
			"(most distributions since 2020), or its BTF in a file given with --btf", ErrNoBTF, path)
	case err != nil && given:
		return nil, fmt.Errorf("%w: --btf %s is not a BTF file (a kernel's .BTF or /sys/kernel/btf/vmlinux): %v", ErrNoBTF, path, err)
	case err != nil:
		return nil, fmt.Errorf("%w: reading %s: %v", ErrNoBTF, path, err)
	}
	return spec, nil
}

// hasTracepoint reports whether the kernel has the raw tracepoint name.
func hasTracepoint(spec *btf.Spec, name string) bool {
	var td *btf.Typedef
	return spec.TypeByName("btf_trace_"+name, &td) == nil
}
