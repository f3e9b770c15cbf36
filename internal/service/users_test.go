package service

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseAccounts(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/bash\n" +
		"# a comment\n" +
		"+nisuser::::::\n" +
		"broken:x:12\n" +
		"neg:x:-1:0::/:/bin/sh\n" +
		"daemoneye-proxy:x:998:997:DaemonEye proxy:/var/lib/daemoneye/proxy:/usr/sbin/nologin\r\n" +
		"daemoneye-proxy:x:5:5::/:/bin/sh\n" +
		"nonl:x:7:7::/:/bin/sh"
	u := parsePasswd([]byte(passwd))
	want := map[string]account{
		"root":            {"root", 0, 0, "/root", "/bin/bash"},
		"daemoneye-proxy": {"daemoneye-proxy", 998, 997, "/var/lib/daemoneye/proxy", "/usr/sbin/nologin"},
		"nonl":            {"nonl", 7, 7, "/", "/bin/sh"},
	}
	if len(u) != len(want) {
		t.Errorf("parsed %v, want %v", u, want)
	}
	for k, v := range want {
		if u[k] != v {
			t.Errorf("%s = %+v, want %+v", k, u[k], v)
		}
	}
	g := parseGroup([]byte("root:x:0:\nadm:x:4:syslog,alice\nbad:x:z:\ndaemoneye-proxy:x:997:\n"))
	if len(g) != 3 || g["daemoneye-proxy"] != 997 || g["adm"] != 4 {
		t.Errorf("groups %v", g)
	}
}

// FuzzParseAccounts feeds arbitrary /etc/passwd and /etc/group contents
// (install reads them from a root it is given): no panic, and every entry
// returned is a well-formed line of the input.
func FuzzParseAccounts(f *testing.F) {
	f.Add([]byte("root:x:0:0:root:/root:/bin/bash\ndaemoneye-center:x:999:999:DaemonEye center:/var/lib/daemoneye/center:/usr/sbin/nologin\n"))
	f.Add([]byte("root:x:0:\nsudo:x:27:alice,bob\n"))
	f.Add([]byte("+::::::\n#c\n\n::::::\na:b:c:d:e:f:g\nx:x:4294967296:0::/:/bin/sh\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for name, a := range parsePasswd(data) {
			if name == "" || name != a.Name || strings.ContainsAny(name, ":\n") || a.UID < 0 || a.GID < 0 {
				t.Fatalf("bad account %q %+v", name, a)
			}
			line := fmt.Sprintf("%s:x:%d:%d::%s:%s\n", a.Name, a.UID, a.GID, a.Home, a.Shell)
			if b := parsePasswd([]byte(line)); b[name] != a {
				t.Fatalf("%+v does not round-trip through %q: %+v", a, line, b[name])
			}
		}
		for name, gid := range parseGroup(data) {
			if name == "" || strings.ContainsAny(name, ":\n") || gid < 0 {
				t.Fatalf("bad group %q %d", name, gid)
			}
		}
	})
}
