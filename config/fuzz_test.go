package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the file layer: any input gives a
// configuration or an error, never a panic.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"agent:\n  proxy_hint: a:1\n", "proxy:\n  flow:\n    priorities: [trace]\n",
		"agent: [1, 2]\n", "&a [*a]\n", "agent:\n  baseline:\n    ring_bytes: 99999999999TiB\n",
		"agent:\n  retention:\n    max_age: -5h\n", "--- \n--- \n", "\x00\xff",
	} {
		f.Add([]byte(seed))
	}
	if b, err := os.ReadFile("../testdata/config/agent.yaml"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := Load(Sources{File: p, Base: fixedDefaults})
		if err == nil && l.Config.Validate() != nil {
			t.Fatalf("Load accepted a configuration that does not validate")
		}
	})
}
