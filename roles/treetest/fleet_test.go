package treetest

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// The fleet registry through two proxies: every node's version, the
// agent's addresses (those of its scope's network namespace), the whole
// proxy path, health figures and lost-event counts.
func TestFleetRegistry(t *testing.T) {
	needRootEBPF(t)
	net, err := testnet.New(t, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	web, err := net.AddHost("web")
	if err != nil {
		t.Fatal(err)
	}
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px1 := tr.NewProxy("px1", c.Cfg.Listen)
	px1.Cfg.Version = "v-test-1"
	px1.Start()
	px2 := tr.NewProxy("px2", px1.Cfg.Listen)
	px2.Cfg.Version = "v-test-1"
	px2.Start()
	ag := tr.newRealAgent("host-f", px2.Cfg.Listen)
	ag.Cfg.Version = "v-test-1"
	ag.Cfg.Scope = "netns:" + web.NamespacePath()
	ag.Start()

	hosts := map[string]sqlstore.Host{}
	eventually(t, 30*time.Second, "health reports of the agent and both proxies", func() bool {
		hs, err := c.SQL.Hosts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		clear(hosts)
		for _, h := range hs {
			hosts[h.AgentID] = h
		}
		for _, id := range []string{"host-f", "px1", "px2"} {
			if h, ok := hosts[id]; !ok || h.Version != "v-test-1" || h.HealthTime.IsZero() {
				return false
			}
		}
		return true
	})
	a := hosts["host-f"]
	if a.Kind != sqlstore.KindAgent || !slices.Equal(a.ProxyPath, []string{"px1", "px2"}) {
		t.Errorf("agent: kind %s, proxy path %v, want agent via [px1 px2]", a.Kind, a.ProxyPath)
	}
	if !slices.Contains(a.Addresses, web.Addr) {
		t.Errorf("agent addresses %v, want its namespace's %v", a.Addresses, web.Addr)
	}
	var health struct {
		Figures map[string]uint64 `json:"figures"`
	}
	if err := json.Unmarshal(a.Health, &health); err != nil || health.Figures == nil {
		t.Errorf("agent health %s (%v): want its figures", a.Health, err)
	} else if _, ok := health.Figures["events_stored"]; !ok {
		t.Errorf("agent health figures %v lack events_stored", health.Figures)
	}
	if a.LostEvents == nil {
		t.Error("agent lost-event figures missing")
	}
	if p := hosts["px2"]; p.Kind != sqlstore.KindProxy || !slices.Equal(p.ProxyPath, []string{"px1"}) {
		t.Errorf("px2: kind %s, path %v, want proxy via [px1]", p.Kind, p.ProxyPath)
	}
	if p := hosts["px1"]; p.Kind != sqlstore.KindProxy || len(p.ProxyPath) != 0 {
		t.Errorf("px1: kind %s, path %v, want proxy directly under the center", p.Kind, p.ProxyPath)
	}
	// The addresses are what links a traced connect to this host.
	ids, err := c.SQL.HostsByAddr(context.Background(), web.Addr)
	if err != nil || !slices.Contains(ids, "host-f") {
		t.Errorf("HostsByAddr(%v) = %v, %v", web.Addr, ids, err)
	}
}
