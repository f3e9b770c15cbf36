package service

import (
	"fmt"
	"strings"
)

// DefaultConfig is the commented configuration file install writes for role
// when none exists. It sets only what the unit depends on (data directories,
// listen addresses, the capture mode); every other key keeps its built-in
// default, and the comments show what an operator fills in.
func DefaultConfig(role string) ([]byte, error) {
	if err := CheckRole(role); err != nil {
		return nil, err
	}
	head := fmt.Sprintf(`# DaemonEye %[1]s: the configuration of the daemoneye-%[1]s service.
# Written by `+"`daemoneye install --role %[1]s`"+`, which never overwrites it.
# Keys not set here keep their built-in defaults; print the effective values with
#   daemoneye config show %[1]s --config %[2]s
# After a change run `+"`daemoneye install --role %[1]s`"+` again (the unit follows the
# directories, ports and capture settings below), then
#   systemctl restart daemoneye-%[1]s
`, role, ConfigPath(role))
	var body string
	switch role {
	case "agent":
		body = `agent:
  data_dir: /var/lib/daemoneye/agent
  # auto tries the eBPF sensor and falls back to /proc polling and the proc
  # connector; ebpf or proc pins one, and the unit then keeps fewer capabilities.
  capture: auto
  # The proxy (or center) this agent sends to, and its certificate:
  #   daemoneye pki issue --role agent NAME --out /var/lib/daemoneye/agent/tls
  # (copy the CA's ca.crt beside it). Certificates are renewed in place, so keep
  # them in the data directory.
  # proxy_hint: proxy-1.example.net:7443
  # tls:
  #   cert: /var/lib/daemoneye/agent/tls/NAME.crt
  #   key: /var/lib/daemoneye/agent/tls/NAME.key
  #   ca: /var/lib/daemoneye/agent/tls/ca.crt
  # Until then the agent can record locally only:
  # standalone: true
  # Limit the agent to one host's processes (netns:, pidns: or cgroup:PATH):
  # scope: netns:/run/netns/web-1
`
	case "proxy":
		body = `proxy:
  listen: 0.0.0.0:7443
  wal_path: /var/lib/daemoneye/proxy/wal
  # The parent proxy or the center, and this proxy's certificate:
  #   daemoneye pki issue --role proxy NAME --dns NAME.example.net --out /var/lib/daemoneye/proxy/tls
  # (copy the CA's ca.crt beside it; chown -R daemoneye-proxy: the directory).
  # upstream: center-1.example.net:7443
  # tls:
  #   cert: /var/lib/daemoneye/proxy/tls/NAME.crt
  #   key: /var/lib/daemoneye/proxy/tls/NAME.key
  #   ca: /var/lib/daemoneye/proxy/tls/ca.crt
`
	case "center":
		body = `center:
  listen: 0.0.0.0:7443
  data_dir: /var/lib/daemoneye/center
  api:
    listen: 127.0.0.1:8443
  # The center's certificate:
  #   daemoneye pki issue --role center NAME --dns NAME.example.net --out /var/lib/daemoneye/center/tls
  # (copy the CA's ca.crt beside it; chown -R daemoneye-center: the directory).
  # tls:
  #   cert: /var/lib/daemoneye/center/tls/NAME.crt
  #   key: /var/lib/daemoneye/center/tls/NAME.key
  #   ca: /var/lib/daemoneye/center/tls/ca.crt
  # The CA directory, to renew certificates through the tree and push the CRL
  # (the daemoneye-center user must be able to read its key):
  # ca_dir: /var/lib/daemoneye/pki
`
	}
	return []byte(head + strings.TrimLeft(body, "\n")), nil
}
