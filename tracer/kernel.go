// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// kernelHZ reads CONFIG_HZ, the rate of jiffies, from the kernel's config
// (/boot/config-RELEASE, then /proc/config.gz). 0 when neither says.
func kernelHZ() uint32 {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	for _, path := range []string{"/boot/config-" + release, "/proc/config.gz"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var r io.Reader = f
		if strings.HasSuffix(path, ".gz") {
			gz, err := gzip.NewReader(f)
			if err != nil {
				f.Close()
				continue
			}
			r = gz
		}
		hz := configHZ(r)
		f.Close()
		if hz != 0 {
			return hz
		}
	}
	return 0
}

func configHZ(r io.Reader) uint32 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ="); ok {
			n, err := strconv.ParseUint(v, 10, 32)
			if err == nil {
				return uint32(n)
			}
		}
	}
	return 0
}

// kallsyms finds the addresses of the named kernel functions. A name that is
// missing, or hidden (kernel.kptr_restrict shows zeros), maps to 0.
func kallsyms(names ...string) (map[string]uint64, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]uint64, len(names))
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(out) < len(names) {
		line := sc.Text()
		// "ffffffff82006870 t tw_timer_handler" (modules add "\t[mod]")
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 || !want[line[sp+1:]] {
			continue
		}
		addr, _, _ := strings.Cut(line, " ")
		v, err := strconv.ParseUint(addr, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing /proc/kallsyms: %q", line)
		}
		out[line[sp+1:]] = v
	}
	return out, sc.Err()
}

// resetReasons names the kernel's enum sk_rst_reason values from its BTF:
// SK_RST_REASON_TCP_ABORT_ON_CLOSE becomes TCP_ABORT_ON_CLOSE.
func resetReasons(spec *btf.Spec) map[uint16]string {
	var enum *btf.Enum
	if err := spec.TypeByName("sk_rst_reason", &enum); err != nil {
		return nil
	}
	names := make(map[uint16]string, len(enum.Values))
	for _, v := range enum.Values {
		names[uint16(v.Value)] = strings.TrimPrefix(v.Name, "SK_RST_REASON_")
	}
	return names
}
