package sqlstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

const (
	digestB3  = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	digestSHA = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
)

// traced marks ev as event seq of trace id.
func traced(id string, seq uint64, ev capture.Event) capture.Event {
	ev.TraceID, ev.TraceSeq = id, seq
	return ev
}

func fileEv(t int64, p capture.ProcKey, kind capture.Kind, f capture.FileOp) capture.Event {
	return capture.Event{Time: t, Kind: kind, Proc: p, Parent: key(1, 1), Comm: "sh", Source: "ebpf", File: &f}
}

// checkRebuild wants BatchEvents to give back exactly the batch's events:
// equal values and the root the agent signed over their encodings.
func checkRebuild(t *testing.T, s *Store, b *wire.Batch) {
	t.Helper()
	got, root, err := s.BatchEvents(context.Background(), b.AgentID, b.Seq)
	if err != nil {
		t.Fatalf("BatchEvents %s/%d: %v", b.AgentID, b.Seq, err)
	}
	if root != b.Root {
		t.Errorf("BatchEvents root %x, want %x", root, b.Root)
	}
	if !reflect.DeepEqual(got, b.Events) {
		t.Errorf("BatchEvents %s/%d:\n got %+v\nwant %+v", b.AgentID, b.Seq, got, b.Events)
	}
	for i := range got {
		enc, err := wire.EncodeEvent(got[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, b.EventCBOR(i)) {
			t.Errorf("event %d rebuilt encodes to %x, the agent signed %x", i, enc, b.EventCBOR(i))
		}
	}
}

// TestTraceKinds ingests one trace event of each shape and checks the row
// it lands in, its trace columns, and that the batch rebuilds exactly.
func TestTraceKinds(t *testing.T) {
	p := key(700, 9000)
	cases := []struct {
		name  string
		ev    capture.Event
		table string
		want  map[string]any // columns of its row (a subset)
	}{
		{"open", fileEv(10, p, capture.KindFileOpen, capture.FileOp{Path: "/etc/passwd", Flags: 0o2000000, Inode: 42, Dev: 2049, Result: 3}),
			"file_events", map[string]any{"kind": "open", "path": "/etc/passwd", "path2": nil, "flags": int64(0o2000000),
				"inode": int64(42), "dev": int64(2049), "result": int64(3), "path_unread": int64(0), "ppid": int64(1)}},
		{"create", fileEv(11, p, capture.KindFileOpen, capture.FileOp{Path: "/tmp/x/../y", Flags: 0o1101, Mode: 0o600, Result: 4}),
			"file_events", map[string]any{"kind": "create", "path": "/tmp/x/../y", "mode": int64(0o600), "inode": nil}},
		{"open failed, path unread", fileEv(12, p, capture.KindFileOpen, capture.FileOp{Result: -14, PathUnread: true}),
			"file_events", map[string]any{"kind": "open", "path": "", "result": int64(-14), "path_unread": int64(1)}},
		{"rename", fileEv(13, p, capture.KindFileRename, capture.FileOp{Path: "/tmp/a", Path2: "/usr/bin/a"}),
			"file_events", map[string]any{"kind": "rename", "path": "/tmp/a", "path2": "/usr/bin/a", "result": int64(0)}},
		{"unlink", fileEv(14, p, capture.KindFileUnlink, capture.FileOp{Path: "/tmp/a", Result: -2}),
			"file_events", map[string]any{"kind": "unlink", "path": "/tmp/a", "result": int64(-2)}},
		{"socket", capture.Event{Time: 15, Kind: capture.KindSocket, Proc: p, Source: "ebpf",
			Sock: &capture.SockOp{Domain: 2, Type: 2, Proto: 17, Result: 5}},
			"network_events", map[string]any{"kind": "socket", "family": int64(2), "sock_type": int64(2), "sock_proto": int64(17),
				"result": int64(5), "proto": nil, "src_ip": nil, "mapped": int64(0)}},
		{"failed connect", capture.Event{Time: 16, Kind: capture.KindConnect, Proc: p, Source: "ebpf",
			Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: netip.MustParseAddrPort("10.0.0.7:0"), Dst: netip.MustParseAddrPort("10.9.9.9:22")},
			Sock: &capture.SockOp{Domain: 2, Type: 1, Result: -111}},
			"network_events", map[string]any{"kind": "connect", "dst_ip": "10.9.9.9", "dst_port": int64(22), "result": int64(-111),
				"family": int64(2), "sock_type": int64(1), "sock_proto": int64(0)}},
		{"exec hash and memory", capture.Event{Time: 17, Kind: capture.KindExecHash, Proc: p, Comm: "x", Source: "ebpf",
			Hashes: &capture.Hashes{Blake3: digestB3, SHA256: digestSHA, Path: "/tmp/x", Size: 12345, Dev: 2049, Inode: 77, Cached: true},
			Mem:    &capture.MemSnippet{Addr: 0x5555_0000, Data: []byte("\x7fELF\x02\x01\x01")}},
			"exe_hashes", map[string]any{"path": "/tmp/x", "size": int64(12345), "inode": int64(77), "dev": int64(2049),
				"cached": int64(1), "error": nil, "comm": "x", "ppid": nil}},
		{"exec not hashed, memory unreadable", capture.Event{Time: 18, Kind: capture.KindExecHash, Proc: p, Source: "ebpf",
			Hashes: &capture.Hashes{Error: "not hashed: the trace does not hash executables"},
			Mem:    &capture.MemSnippet{Addr: 0x4000, Error: "mem: EIO"}},
			"exe_hashes", map[string]any{"path": "", "blake3": nil, "sha256": nil, "size": nil,
				"error": "not hashed: the trace does not hash executables"}},
		{"note start", capture.Event{Time: 19, Kind: capture.KindTraceNote, Proc: p, Source: "ebpf",
			Note: &capture.TraceNote{What: "start", Depth: -1, Pids: 3}},
			"trace_notes", map[string]any{"what": "start", "reason": "", "depth": int64(-1), "pids": int64(3)}},
		{"note sampled", capture.Event{Time: 20, Kind: capture.KindTraceNote, Proc: p, Source: "ebpf",
			Note: &capture.TraceNote{What: "sampled", Reason: capture.DropMaxEventsPerSec, Dropped: 1234}},
			"trace_notes", map[string]any{"what": "sampled", "reason": "cap:max_events_per_sec", "dropped": int64(1234)}},
		{"note stop", capture.Event{Time: 21, Kind: capture.KindTraceNote, Proc: p, Source: "ebpf",
			Note: &capture.TraceNote{What: "stop", Reason: capture.StopMaxBytes, Dropped: 5, Events: 99, Bytes: 1 << 20}},
			"trace_notes", map[string]any{"what": "stop", "reason": "cap:max_bytes", "events": int64(99), "bytes": int64(1 << 20)}},
		{"traced exec with env", func() capture.Event {
			ev := exec(22, p, key(1, 1), "/usr/bin/env", "env")
			ev.Exec.Env, ev.Exec.EnvTruncated = []string{"PATH=/bin", "SECRET=\xff\xfe"}, true
			return ev
		}(), "process_events", map[string]any{"kind": "exec", "exe": "/usr/bin/env", "env_truncated": int64(1),
			"env": `["PATH=/bin",{"b64":"U0VDUkVUPf/+"}]`}},
		{"traced fork", fork(23, key(701, 9001), p), "process_events", map[string]any{"kind": "fork", "ppid": int64(700)}},
		{"traced accept", conn(24, capture.KindAccept, p, "10.0.0.7:22", "10.0.0.9:50000"), "network_events",
			map[string]any{"kind": "accept", "result": nil}},
		// Shapes the typed tables cannot hold exactly are kept whole.
		{"file kind without file", capture.Event{Time: 25, Kind: capture.KindFileUnlink, Proc: p}, "raw_events",
			map[string]any{"kind": int64(capture.KindFileUnlink)}},
		{"digest not lowercase hex", capture.Event{Time: 26, Kind: capture.KindExecHash, Proc: p,
			Hashes: &capture.Hashes{SHA256: strings.ToUpper(digestSHA)}}, "raw_events",
			map[string]any{"kind": int64(capture.KindExecHash)}},
		{"exec with a file payload", func() capture.Event {
			ev := exec(27, p, key(1, 1), "/bin/x")
			ev.File = &capture.FileOp{Path: "/x"}
			return ev
		}(), "raw_events", map[string]any{"kind": int64(capture.KindExec)}},
		{"unknown kind", capture.Event{Time: 28, Kind: capture.Kind(99), Proc: p}, "raw_events",
			map[string]any{"kind": int64(99)}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t)
			ev := traced("tr-1", uint64(i+1), tc.ev)
			ev.Seq = uint64(100 + i)
			// A baseline event beside it: its row has no trace columns.
			b := ingest(t, s, "web-1", 3, exec(1, key(5, 5), key(1, 1), "/bin/true", "true"), ev)
			row := rowMap(t, s, `SELECT * FROM `+tc.table+` WHERE host = 'web-1' AND batch_seq = 3 AND idx = 1`)
			want := map[string]any{"trace_id": "tr-1", "trace_seq": int64(i + 1), "time": tc.ev.Time,
				"pid": int64(700), "start": int64(9000)}
			if tc.name == "traced fork" {
				want["pid"], want["start"] = int64(701), int64(9001)
			}
			if tc.table == "raw_events" {
				delete(want, "pid")
				delete(want, "start")
			} else {
				want["seq"] = int64(100 + i)
			}
			for k, v := range tc.want {
				want[k] = v
			}
			for k, v := range want {
				if _, ok := row[k]; !ok {
					t.Errorf("%s has no column %s", tc.table, k)
				} else if !reflect.DeepEqual(row[k], v) {
					t.Errorf("%s.%s = %#v, want %#v", tc.table, k, row[k], v)
				}
			}
			if tc.table == "exe_hashes" && tc.ev.Hashes.SHA256 != "" {
				if got := rowMap(t, s, `SELECT hex(blake3) b, hex(sha256) s FROM exe_hashes`); got["b"] != strings.ToUpper(digestB3) ||
					got["s"] != strings.ToUpper(digestSHA) {
					t.Errorf("digests stored as %v, want the bytes of the hex digests", got)
				}
			}
			if tc.ev.Mem != nil {
				m := rowMap(t, s, `SELECT addr, data, error, trace_id, trace_seq FROM mem_snippets WHERE idx = 1`)
				if m["addr"] != int64(tc.ev.Mem.Addr) || m["trace_id"] != "tr-1" || m["trace_seq"] != int64(i+1) ||
					m["data"] != string(tc.ev.Mem.Data) {
					t.Errorf("mem_snippets row %v, want addr %#x data %q of trace tr-1/%d", m, tc.ev.Mem.Addr, tc.ev.Mem.Data, i+1)
				}
			} else if n := count(t, s, "mem_snippets"); n != 0 {
				t.Errorf("%d mem_snippets rows for an event without memory", n)
			}
			base := rowMap(t, s, `SELECT trace_id, trace_seq FROM process_events WHERE idx = 0`)
			if base["trace_id"] != nil || base["trace_seq"] != nil {
				t.Errorf("baseline exec has trace columns %v, want NULL", base)
			}
			if tc.table != "raw_events" {
				if n := count(t, s, "raw_events"); n != 0 {
					t.Errorf("%d raw_events rows, want none", n)
				}
			}
			checkRebuild(t, s, b)
			refs, err := s.TraceBatches(context.Background(), "tr-1")
			if err != nil || !reflect.DeepEqual(refs, []BatchRef{{"web-1", 3}}) {
				t.Errorf("TraceBatches = %v, %v; want [{web-1 3}]", refs, err)
			}
			evs, err := s.TraceEvents(context.Background(), "tr-1")
			if err != nil || len(evs) != 1 || evs[0].TraceSeq != uint64(i+1) || evs[0].Kind != ev.Kind.String() || evs[0].Idx != 1 {
				t.Errorf("TraceEvents = %+v, %v; want the one event of kind %s", evs, err, ev.Kind)
			}
		})
	}
}

// TestIngestTraceTwice: a replayed trace batch adds nothing anywhere.
func TestIngestTraceTwice(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	if err := s.SetHostAddresses(ctx, "web-1", []string{"10.0.0.5"}); err != nil {
		t.Fatal(err)
	}
	p := key(70, 700)
	evs := []capture.Event{
		traced("tr", 1, capture.Event{Time: 1, Kind: capture.KindTraceNote, Proc: p, Note: &capture.TraceNote{What: "start"}}),
		traced("tr", 2, fileEv(2, p, capture.KindFileOpen, capture.FileOp{Path: "/etc/hosts", Result: 3})),
		traced("tr", 3, capture.Event{Time: 3, Kind: capture.KindExecHash, Proc: p, Hashes: &capture.Hashes{SHA256: digestSHA},
			Mem: &capture.MemSnippet{Addr: 1, Data: []byte{1}}}),
		traced("tr", 4, conn(4, capture.KindConnect, p, "10.0.0.7:40000", "10.0.0.5:80")),
		{Time: 5, Kind: capture.Kind(77), Proc: p},
	}
	b := ingest(t, s, "app-1", 1, evs...)
	tables := []string{"process_events", "network_events", "file_events", "exe_hashes", "mem_snippets", "trace_notes",
		"raw_events", "links", "batches"}
	before := map[string]int{}
	for _, tbl := range tables {
		before[tbl] = count(t, s, tbl)
	}
	if before["links"] != 1 {
		t.Fatalf("%d links, want 1", before["links"])
	}
	for range 2 {
		if err := s.IngestBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tbl := range tables {
		if n := count(t, s, tbl); n != before[tbl] {
			t.Errorf("%s: %d rows after a replay, want %d", tbl, n, before[tbl])
		}
	}
	checkRebuild(t, s, b)
}

// TestLinks: a traced connect to an enrolled host's address and that
// host's accept of the same connection meet, whichever arrives first.
func TestLinks(t *testing.T) {
	ctx := context.Background()
	client, server := key(200, 5000), key(300, 6000)
	connect := traced("tr-9", 7, conn(1_000_000, capture.KindConnect, client, "10.0.0.7:40000", "10.0.0.5:8080"))
	// The accept, seen from the server: its src is the connect's dst.
	accept := conn(1_000_500, capture.KindAccept, server, "10.0.0.5:8080", "10.0.0.7:40000")
	otherPort := conn(1_000_600, capture.KindAccept, key(301, 6001), "10.0.0.5:8080", "10.0.0.7:40001")
	tooLate := conn(1_000_000+2*linkSkew, capture.KindAccept, key(302, 6002), "10.0.0.5:8080", "10.0.0.7:40000")

	for _, tc := range []struct {
		name         string
		connectFirst bool
	}{{"connect first", true}, {"accept first", false}} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t)
			if err := s.SetHostAddresses(ctx, "web-1", []string{"10.0.0.5", "fd00::5"}); err != nil {
				t.Fatal(err)
			}
			if err := s.SetHostAddresses(ctx, "app-1", []string{"10.0.0.7"}); err != nil {
				t.Fatal(err)
			}
			ingestConnect := func() {
				ingest(t, s, "app-1", 1, connect,
					// No link: untraced, to nobody's address, to itself.
					conn(2, capture.KindConnect, client, "10.0.0.7:40002", "10.0.0.5:8080"),
					traced("tr-9", 8, conn(3, capture.KindConnect, client, "10.0.0.7:40003", "192.0.2.1:443")),
					traced("tr-9", 9, conn(4, capture.KindConnect, client, "10.0.0.7:40004", "10.0.0.7:22")))
			}
			ingestAccept := func() {
				ingest(t, s, "web-1", 4, tooLate, otherPort, accept)
			}
			if tc.connectFirst {
				ingestConnect()
				if ls, _ := s.Links(ctx, "tr-9"); len(ls) != 1 || !ls[0].To.IsZero() {
					t.Fatalf("after the connect alone: links %+v, want one without its accept", ls)
				}
				if ls, _ := s.UnfollowedLinks(ctx); len(ls) != 0 {
					t.Errorf("UnfollowedLinks before the accept = %+v, want none (no process to follow yet)", ls)
				}
				ingestAccept()
			} else {
				ingestAccept()
				ingestConnect()
			}
			ls, err := s.Links(ctx, "tr-9")
			if err != nil {
				t.Fatal(err)
			}
			if len(ls) != 1 {
				t.Fatalf("links %+v, want 1", ls)
			}
			l := ls[0]
			fromEv := rowMap(t, s, `SELECT id FROM network_events WHERE host = 'app-1' AND idx = 0`)["id"]
			toEv := rowMap(t, s, `SELECT id FROM network_events WHERE host = 'web-1' AND idx = 2`)["id"]
			want := Link{ID: l.ID, TraceID: "tr-9", Time: time.Unix(0, connect.Time), FromHost: "app-1", From: client,
				ToHost: "web-1", To: server, Proto: capture.ProtoTCP, Src: connect.Conn.Src, Dst: connect.Conn.Dst,
				FromEvent: fromEv.(int64), ToEvent: toEv.(int64)}
			if !reflect.DeepEqual(l, want) {
				t.Errorf("link\n got %+v\nwant %+v", l, want)
			}
			un, err := s.UnfollowedLinks(ctx)
			if err != nil || len(un) != 1 || un[0].ID != l.ID {
				t.Fatalf("UnfollowedLinks = %+v, %v; want the link", un, err)
			}
			at := time.Unix(1_800_000_000, 0)
			if err := s.MarkFollowed(ctx, l.ID, at); err != nil {
				t.Fatal(err)
			}
			if err := s.MarkFollowed(ctx, l.ID, at.Add(time.Hour)); err != nil {
				t.Errorf("MarkFollowed again: %v", err)
			}
			if un, _ := s.UnfollowedLinks(ctx); len(un) != 0 {
				t.Errorf("UnfollowedLinks after MarkFollowed = %+v", un)
			}
			if ls, _ := s.Links(ctx, "tr-9"); len(ls) != 1 || !ls[0].Followed.Equal(at) {
				t.Errorf("followed link %+v, want Followed %v (the first time)", ls, at)
			}
			if err := s.MarkFollowed(ctx, l.ID+100, at); !errors.Is(err, ErrNoLink) {
				t.Errorf("MarkFollowed of no link: %v, want ErrNoLink", err)
			}
			evs, err := s.TraceEvents(ctx, "tr-9")
			// In time order the linked connect (time 1e6) is last.
			if err != nil || len(evs) != 3 || evs[2].LinkHost != "web-1" || evs[2].TraceSeq != 7 || evs[0].LinkHost != "" {
				t.Errorf("TraceEvents = %+v, %v; want 3 connects, #7 linked to web-1", evs, err)
			}
		})
	}
}

// TestLinkOwners: an address two hosts report is narrowed to the
// connecting host's site, and left unlinked when that does not decide.
func TestLinkOwners(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for _, h := range []Host{
		{AgentID: "app-1", SiteTag: "dc1"},
		{AgentID: "web-dc1", SiteTag: "dc1", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.5")}},
		{AgentID: "web-dc2", SiteTag: "dc2", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.5")}},
		{AgentID: "db-a", SiteTag: "dc2", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.6")}},
		{AgentID: "db-b", SiteTag: "dc2", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.6")}},
	} {
		if err := s.UpsertHost(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	p := key(1, 2)
	ingest(t, s, "app-1", 1,
		traced("t", 1, conn(1, capture.KindConnect, p, "10.0.0.7:1000", "10.0.0.5:80")),
		traced("t", 2, conn(2, capture.KindConnect, p, "10.0.0.7:1001", "10.0.0.6:5432")),
		traced("t", 3, conn(3, capture.KindConnect, p, "[::ffff:10.0.0.7]:1002", "[::ffff:10.0.0.5]:443")))
	ls, err := s.Links(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range ls {
		got = append(got, fmt.Sprintf("%s->%s %s", l.FromHost, l.ToHost, l.Dst))
	}
	want := []string{"app-1->web-dc1 10.0.0.5:80", "app-1->web-dc1 10.0.0.5:443"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("links %q, want %q", got, want)
	}
}

func TestSetHostAddresses(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.UpsertHost(ctx, Host{AgentID: "web-1", Version: "1.0", SiteTag: "dc1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHostAddresses(ctx, "web-1", []string{"10.0.0.5", "::ffff:10.0.0.5", "fe80::1%eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHostAddresses(ctx, "web-1", []string{"10.0.0.9", "not-an-ip"}); err == nil {
		t.Error("SetHostAddresses with a bad address was accepted")
	}
	// The fleet registry's refresh knows no addresses: it must keep them.
	if err := s.UpsertHost(ctx, Host{AgentID: "web-1", Version: "1.1", SiteTag: "dc1"}); err != nil {
		t.Fatal(err)
	}
	hosts, err := s.Hosts(ctx)
	if err != nil || len(hosts) != 1 {
		t.Fatalf("Hosts = %v, %v", hosts, err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fe80::1")}
	if h := hosts[0]; !reflect.DeepEqual(h.Addresses, want) || h.Version != "1.1" {
		t.Errorf("host %+v, want addresses %v and version 1.1", h, want)
	}
	for addr, want := range map[string][]string{"10.0.0.5": {"web-1"}, "fe80::1": {"web-1"}, "10.0.0.9": nil} {
		if got, err := s.HostsByAddr(ctx, netip.MustParseAddr(addr)); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("HostsByAddr(%s) = %v, %v; want %v", addr, got, err, want)
		}
	}
	// An empty list clears; an unknown host is added.
	if err := s.UpsertHost(ctx, Host{AgentID: "web-1", Addresses: []netip.Addr{}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.HostsByAddr(ctx, netip.MustParseAddr("10.0.0.5")); got != nil {
		t.Errorf("after clearing: HostsByAddr = %v", got)
	}
	if err := s.SetHostAddresses(ctx, "new-1", []string{"10.1.1.1"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.HostsByAddr(ctx, netip.MustParseAddr("10.1.1.1")); !reflect.DeepEqual(got, []string{"new-1"}) {
		t.Errorf("HostsByAddr of a new host = %v", got)
	}
}

// TestTraceTimeline: a trace over two hosts and several batches comes back
// ordered by time, then host, then trace_seq, and TraceBatches names
// exactly the batches that hold it.
func TestTraceTimeline(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	a, w := key(10, 100), key(20, 200)
	note := func(tm int64, p capture.ProcKey, what string) capture.Event {
		return capture.Event{Time: tm, Kind: capture.KindTraceNote, Proc: p, Note: &capture.TraceNote{What: what}}
	}
	// app-1 batch 1: seq 1..3; app-1 batch 2: nothing of the trace;
	// web-1 batch 5: seq 1..2 at times equal to app-1's; app-1 batch 3:
	// seq 4, earlier in time than seq 3 (clock order is not seq order).
	ingest(t, s, "app-1", 1, traced("T", 1, note(100, a, "start")), exec(150, key(99, 9), key(1, 1), "/bin/other"),
		traced("T", 2, fileEv(200, a, capture.KindFileOpen, capture.FileOp{Path: "/a"})),
		traced("T", 3, fileEv(400, a, capture.KindFileUnlink, capture.FileOp{Path: "/a"})))
	ingest(t, s, "app-1", 2, exec(450, key(98, 9), key(1, 1), "/bin/other"))
	ingest(t, s, "web-1", 5, traced("T", 1, note(200, w, "start")),
		traced("T", 2, capture.Event{Time: 300, Kind: capture.KindExecHash, Proc: w, Hashes: &capture.Hashes{Path: "/srv/app"},
			Mem: &capture.MemSnippet{Addr: 7, Data: []byte("MZ")}}))
	ingest(t, s, "app-1", 3, traced("T", 4, fileEv(350, a, capture.KindFileRename, capture.FileOp{Path: "/b", Path2: "/c"})),
		traced("other", 1, note(1, a, "start")))

	refs, err := s.TraceBatches(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if want := []BatchRef{{"app-1", 1}, {"app-1", 3}, {"web-1", 5}}; !reflect.DeepEqual(refs, want) {
		t.Errorf("TraceBatches = %v, want %v", refs, want)
	}
	evs, err := s.TraceEvents(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%d %s/%d #%d %s", e.Time, e.Host, e.BatchSeq, e.TraceSeq, e.Kind))
	}
	want := []string{
		"100 app-1/1 #1 trace_note",
		"200 app-1/1 #2 file_open",
		"200 web-1/5 #1 trace_note",
		"300 web-1/5 #2 exec_hash",
		"350 app-1/3 #4 file_rename",
		"400 app-1/1 #3 file_unlink",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("timeline\n got %q\nwant %q", got, want)
	}
	if m := evs[3].Mem; m == nil || string(m.Data) != "MZ" || evs[3].Path != "/srv/app" {
		t.Errorf("exec_hash entry %+v, want path /srv/app with its memory snippet", evs[3])
	}
	if evs[4].Path != "/b" || evs[4].Path2 != "/c" || evs[0].Note == nil || evs[0].Note.What != "start" {
		t.Errorf("entries lost fields: %+v", evs)
	}
	if evs, err := s.TraceEvents(ctx, "nope"); err != nil || len(evs) != 0 {
		t.Errorf("TraceEvents of an unknown trace = %v, %v", evs, err)
	}
}
