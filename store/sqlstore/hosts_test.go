package sqlstore

import (
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func TestHosts(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	t0 := s.now()
	if err := s.UpsertHost(ctx, Host{AgentID: "px-1", Kind: KindProxy, Version: "1.0", SiteTag: "dc1",
		Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	web := Host{AgentID: "web-1", Version: "1.2.0", SiteTag: "dc1", ProxyPath: []string{"px-1"},
		Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("::ffff:10.0.0.5"),
			netip.MustParseAddr("fd00::5")}}
	if err := s.UpsertHost(ctx, web); err != nil {
		t.Fatal(err)
	}
	// Events arrive, then a health report, then the host says hello again
	// from a new address with a new version.
	ingest(t, s, "web-1", 1, exec(5000, key(1, 1), key(0, 0), "/sbin/init"))
	s.now = func() time.Time { return t0.Add(time.Minute) }
	health := json.RawMessage(`{"cpu":0.25,"rss":41000000}`)
	if err := s.RecordHealth(ctx, "web-1", t0.Add(30*time.Second), health, map[string]uint64{"ring_full": 3}); err != nil {
		t.Fatal(err)
	}
	// An older report does not replace a newer one.
	if err := s.RecordHealth(ctx, "web-1", t0.Add(10*time.Second), json.RawMessage(`{"cpu":0.9}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordHealth(ctx, "web-1", time.Time{}, json.RawMessage(`[1]`), nil); err == nil {
		t.Error("RecordHealth with a non-object was accepted")
	}
	web.Version, web.Addresses = "1.3.0", []netip.Addr{netip.MustParseAddr("10.0.0.6")}
	if err := s.UpsertHost(ctx, web); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertHost(ctx, Host{AgentID: "x", Kind: "laptop"}); err == nil {
		t.Error("UpsertHost with kind laptop was accepted")
	}

	hosts, err := s.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 {
		t.Fatalf("%d hosts, want 2", len(hosts))
	}
	px, w := hosts[0], hosts[1]
	if px.AgentID != "px-1" || px.Kind != KindProxy || px.LastEvent != (time.Time{}) || len(px.ProxyPath) != 0 {
		t.Errorf("proxy host: %+v", px)
	}
	want := Host{AgentID: "web-1", Kind: KindAgent, Version: "1.3.0", SiteTag: "dc1", ProxyPath: []string{"px-1"},
		Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.6")}, FirstSeen: t0, LastSeen: t0.Add(time.Minute),
		LastEvent: time.Unix(0, 5000), Health: health, HealthTime: t0.Add(30 * time.Second),
		LostEvents: map[string]uint64{"ring_full": 3}}
	if !reflect.DeepEqual(w, want) {
		t.Errorf("web-1:\n got %+v\nwant %+v", w, want)
	}

	for addr, want := range map[string][]string{"10.0.0.6": {"web-1"}, "::ffff:10.0.0.6": {"web-1"},
		"10.0.0.5": nil, "10.0.0.1": {"px-1"}, "fd00::5": nil} {
		got, err := s.HostsByAddr(ctx, netip.MustParseAddr(addr))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("HostsByAddr(%s) = %v, want %v", addr, got, want)
		}
	}
	if ok, err := s.HasBatch(ctx, "web-1", 1); !ok || err != nil {
		t.Errorf("HasBatch(web-1, 1) = %v, %v; want true", ok, err)
	}
	if ok, err := s.HasBatch(ctx, "web-1", 2); ok || err != nil {
		t.Errorf("HasBatch(web-1, 2) = %v, %v; want false", ok, err)
	}
}
