package testnet

import (
	"os"
	"strings"
)

// HostMounts returns the host's mount table (pid 1's view) without the
// mounts that tests running in parallel make and remove on their own: test
// temp dirs (a tmpfs for a small-disk test), our helpers' scratch dirs and
// network namespace files. A test that checks "nothing was mounted" compares
// two of these.
func HostMounts() (string, error) {
	b, err := os.ReadFile("/proc/1/mountinfo")
	if err != nil {
		return "", err
	}
	var keep []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		if strings.HasPrefix(mp, "/tmp/Test") || strings.HasPrefix(mp, "/tmp/daemoneye-") ||
			strings.HasPrefix(mp, "/tmp/Benchmark") || mp == netnsDir || strings.HasPrefix(mp, netnsDir+"/") {
			continue
		}
		keep = append(keep, strings.Join(f[3:], " ")) // without the ids, which only number mounts
	}
	return strings.Join(keep, "\n"), nil
}
