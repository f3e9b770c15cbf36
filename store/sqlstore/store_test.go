package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

func TestMigrationIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "center.db")
	schema := func() string {
		db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var v int
		if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
			t.Fatal(err)
		}
		rows, err := db.Query("SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY name")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var b strings.Builder
		fmt.Fprintf(&b, "user_version=%d\n", v)
		for rows.Next() {
			var typ, name, sql string
			if err := rows.Scan(&typ, &name, &sql); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %s %s\n", typ, name, sql)
		}
		return b.String()
	}
	for i := range 3 {
		s, err := Open(path, testLogger())
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if i == 1 {
			ingest(t, s, "h", 1, exec(1, key(10, 1), key(1, 1), "/bin/true"))
		}
		if err := s.Close(); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
	}
	got := schema()
	if !strings.HasPrefix(got, fmt.Sprintf("user_version=%d\n", len(migrations))) {
		t.Fatalf("schema after three opens starts %q, want user_version=%d", got[:20], len(migrations))
	}
	for _, tbl := range []string{"hosts", "processes", "process_events", "network_events", "file_events", "traces",
		"trace_targets", "links", "alerts", "operators", "approvals", "rule_runs", "rule_cursors", "batches", "exe_hashes",
		"mem_snippets", "trace_notes", "raw_events"} {
		if !strings.Contains(got, "table "+tbl+" ") {
			t.Errorf("schema has no table %s", tbl)
		}
	}
	s, err := Open(path, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "processes"); n != 1 {
		t.Errorf("reopen lost rows: %d processes, want 1", n)
	}
	s.Close()
	if again := schema(); again != got {
		t.Errorf("schema changed on a further open:\n%s\nthen\n%s", got, again)
	}

	// A database from a newer binary is refused, not "migrated".
	w, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := Open(path, testLogger()); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("open of a newer schema: %v, want ErrSchemaTooNew", err)
	}
}

func TestOpenPragmas(t *testing.T) {
	s := openTest(t)
	for q, want := range map[string]any{
		"PRAGMA journal_mode": "wal", "PRAGMA synchronous": int64(1), "PRAGMA foreign_keys": int64(1),
		"PRAGMA busy_timeout": int64(5000),
	} {
		var got any
		if err := s.db.QueryRow(q).Scan(&got); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if b, ok := got.([]byte); ok {
			got = string(b)
		}
		if got != want {
			t.Errorf("writer %s = %v, want %v", q, got, want)
		}
	}
	var qo int
	if err := s.ro.QueryRow("SELECT query_only FROM pragma_query_only").Scan(&qo); err == nil {
		t.Errorf("read-only pool ran a pragma function outside the allow list (query_only=%d)", qo)
	}
}

// The batch of TestIngestColumns: every event kind, a parent known only by
// pid, an IPv4-mapped accept.
func columnsBatch() []capture.Event {
	bash, curl, sub, srv := key(100, 4000), key(200, 5000), key(201, 5100), key(300, 6000)
	evs := []capture.Event{
		{Time: 1000, Kind: capture.KindExec, Proc: bash, Parent: key(1, 1), Comm: "bash", Source: "ebpf",
			Exec: &capture.Exec{UID: 1000, GID: 1001, EUID: 0, EGID: 1003, Exe: "/usr/bin/bash",
				Argv: []string{"bash", "-c", "curl x | sh"}, ArgvTruncated: true, Cwd: "/home/u", TTY: "pts/3",
				CgroupID: 77, PidNS: 4026531836, NetNS: 4026531840, MntNS: 4026531841}},
		fork(2000, curl, bash),
		exec(3000, curl, bash, "/usr/bin/curl", "curl", "http://10.0.0.5:8080/x"),
		conn(4000, capture.KindConnect, curl, "10.0.0.7:40000", "10.0.0.5:8080"),
		conn(4500, capture.KindAccept, srv, "[::ffff:10.0.0.7]:8080", "[::ffff:10.0.0.9]:50000"),
		conn(5000, capture.KindClose, curl, "10.0.0.7:40000", "10.0.0.5:8080"),
		{Time: 6000, Kind: capture.KindExit, Proc: curl, Source: "ebpf", Exit: &capture.Exit{Code: 0, Signal: 9, Core: true}},
		fork(7000, sub, key(100, 0)),
	}
	for i := range evs {
		evs[i].Seq = uint64(11 + i)
	}
	return evs
}

func checkRow(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w, ok := want[k]
		if !ok {
			t.Errorf("%s: unexpected column %s = %v", what, k, got[k])
			continue
		}
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("%s: %s = %#v, want %#v", what, k, got[k], w)
		}
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("%s: no column %s", what, k)
		}
	}
}

func TestIngestColumns(t *testing.T) {
	s := openTest(t)
	now := s.now().UnixNano()
	b := ingest(t, s, "web-1", 7, columnsBatch()...)

	// process_events: one row per fork/exec/exit, exactly as sent.
	base := func(idx, seq, tm int64, kind string, pid, start int64, ppid, pstart any, comm string) map[string]any {
		m := map[string]any{"host": "web-1", "batch_seq": int64(7), "idx": idx, "seq": seq, "time": tm, "kind": kind,
			"pid": pid, "start": start, "ppid": ppid, "pstart": pstart, "comm": comm, "source": "ebpf",
			"trace_id": nil, "trace_seq": nil}
		for _, c := range []string{"uid", "gid", "euid", "egid", "exe", "argv", "cmdline", "argv_truncated", "cwd", "tty",
			"cgroup_id", "pid_ns", "net_ns", "mnt_ns", "exit_code", "exit_signal", "exit_core", "env", "env_truncated"} {
			m[c] = nil
		}
		return m
	}
	execBash := base(0, 11, 1000, "exec", 100, 4000, int64(1), int64(1), "bash")
	for k, v := range map[string]any{"uid": int64(1000), "gid": int64(1001), "euid": int64(0), "egid": int64(1003),
		"exe": "/usr/bin/bash", "argv": `["bash","-c","curl x | sh"]`, "cmdline": "bash -c curl x | sh",
		"argv_truncated": int64(1), "cwd": "/home/u", "tty": "pts/3", "cgroup_id": int64(77),
		"pid_ns": int64(4026531836), "net_ns": int64(4026531840), "mnt_ns": int64(4026531841), "env_truncated": int64(0)} {
		execBash[k] = v
	}
	forkCurl := base(1, 12, 2000, "fork", 200, 5000, int64(100), int64(4000), "")
	execCurl := base(2, 13, 3000, "exec", 200, 5000, int64(100), int64(4000), "curl")
	for k, v := range map[string]any{"uid": int64(1000), "gid": int64(1000), "euid": int64(1000), "egid": int64(1000),
		"exe": "/usr/bin/curl", "argv": `["curl","http://10.0.0.5:8080/x"]`, "cmdline": "curl http://10.0.0.5:8080/x",
		"argv_truncated": int64(0), "cwd": "/home/u", "tty": "", "cgroup_id": int64(0), "pid_ns": int64(0),
		"net_ns": int64(0), "mnt_ns": int64(0), "env_truncated": int64(0)} {
		execCurl[k] = v
	}
	exitCurl := base(6, 17, 6000, "exit", 200, 5000, nil, nil, "")
	exitCurl["exit_code"], exitCurl["exit_signal"], exitCurl["exit_core"] = int64(0), int64(9), int64(1)
	forkSub := base(7, 18, 7000, "fork", 201, 5100, int64(100), int64(0), "") // the event as sent: parent start unknown

	pe := rowMaps(t, s, "SELECT * FROM process_events ORDER BY idx")
	want := []map[string]any{execBash, forkCurl, execCurl, exitCurl, forkSub}
	if len(pe) != len(want) {
		t.Fatalf("%d process_events rows, want %d", len(pe), len(want))
	}
	for i := range want {
		id := pe[i]["id"]
		delete(pe[i], "id")
		if id != int64(i+1) {
			t.Errorf("process_events row %d: id %v, want %d", i, id, i+1)
		}
		checkRow(t, fmt.Sprintf("process_events idx %v", want[i]["idx"]), pe[i], want[i])
	}

	// network_events: the mapped accept is stored unmapped, flagged.
	ne := rowMaps(t, s, "SELECT * FROM network_events ORDER BY idx")
	nbase := func(idx, seq, tm int64, kind string, pid, start int64, src string, sport int64, dst string, dport, mapped int64) map[string]any {
		return map[string]any{"host": "web-1", "batch_seq": int64(7), "idx": idx, "seq": seq, "time": tm, "kind": kind,
			"pid": pid, "start": start, "ppid": nil, "pstart": nil, "comm": "", "source": "ebpf", "proto": int64(6),
			"family": nil, "sock_type": nil, "src_ip": src, "src_port": sport, "dst_ip": dst, "dst_port": dport,
			"mapped": mapped, "result": nil, "sock_proto": nil, "trace_id": nil, "trace_seq": nil}
	}
	wantNet := []map[string]any{
		nbase(3, 14, 4000, "connect", 200, 5000, "10.0.0.7", 40000, "10.0.0.5", 8080, 0),
		nbase(4, 15, 4500, "accept", 300, 6000, "10.0.0.7", 8080, "10.0.0.9", 50000, 3),
		nbase(5, 16, 5000, "close", 200, 5000, "10.0.0.7", 40000, "10.0.0.5", 8080, 0),
	}
	if len(ne) != len(wantNet) {
		t.Fatalf("%d network_events rows, want %d", len(ne), len(wantNet))
	}
	for i := range wantNet {
		delete(ne[i], "id")
		checkRow(t, fmt.Sprintf("network_events idx %v", wantNet[i]["idx"]), ne[i], wantNet[i])
	}

	// processes: fork copied the parent's image; exec replaced it; the
	// pid-only parent was resolved to the live incarnation.
	proc := func(pid, start int64, ppid, pstart any, comm string, execed int64, startTime, exitTime any) map[string]any {
		return map[string]any{"host": "web-1", "pid": pid, "start": start, "ppid": ppid, "pstart": pstart, "comm": comm,
			"start_time": startTime, "exit_time": exitTime, "exit_code": nil, "exit_signal": nil, "exit_core": nil,
			"seeded": int64(0), "execed": execed}
	}
	bashImage := map[string]any{"uid": int64(1000), "gid": int64(1001), "euid": int64(0), "egid": int64(1003),
		"exe": "/usr/bin/bash", "argv": `["bash","-c","curl x | sh"]`, "cmdline": "bash -c curl x | sh",
		"argv_truncated": int64(1), "cwd": "/home/u", "tty": "pts/3", "cgroup_id": int64(77),
		"pid_ns": int64(4026531836), "net_ns": int64(4026531840), "mnt_ns": int64(4026531841)}
	pBash := proc(100, 4000, int64(1), int64(1), "bash", 1, int64(1000), nil)
	pCurl := proc(200, 5000, int64(100), int64(4000), "curl", 1, int64(2000), int64(6000))
	pSub := proc(201, 5100, int64(100), int64(4000), "bash", 0, int64(7000), nil)
	for k, v := range bashImage {
		pBash[k], pSub[k] = v, v
	}
	for k, v := range execCurl {
		if _, ok := bashImage[k]; ok {
			pCurl[k] = v
		}
	}
	pCurl["exit_code"], pCurl["exit_signal"], pCurl["exit_core"] = int64(0), int64(9), int64(1)
	ps := rowMaps(t, s, "SELECT "+procCols+" FROM processes ORDER BY pid")
	wantProcs := []map[string]any{pBash, pCurl, pSub}
	if len(ps) != len(wantProcs) {
		t.Fatalf("%d processes, want %d: %v", len(ps), len(wantProcs), ps)
	}
	for i := range wantProcs {
		checkRow(t, fmt.Sprintf("processes pid %v", wantProcs[i]["pid"]), ps[i], wantProcs[i])
	}

	checkRow(t, "hosts", rowMap(t, s, "SELECT * FROM hosts"), map[string]any{"agent_id": "web-1", "kind": "agent",
		"version": "", "addresses": "[]", "site_tag": "", "proxy_path": "[]", "first_seen": now, "last_seen": now,
		"last_event": int64(7000), "health": "{}", "health_time": nil, "lost_events": "{}"})
	checkRow(t, "batches", rowMap(t, s, "SELECT * FROM batches"), map[string]any{"host": "web-1", "seq": int64(7),
		"ts_start": int64(1000), "ts_end": int64(7000), "events": int64(8), "root": string(b.Root[:]), "ingested": now, "purged": nil})

	// The rows rebuild the signed events exactly: each re-encodes to its
	// Merkle leaf and proves against the root.
	evs, root, err := s.BatchEvents(context.Background(), "web-1", 7)
	if err != nil {
		t.Fatal(err)
	}
	if root != b.Root {
		t.Errorf("BatchEvents root %x, want %x", root, b.Root)
	}
	if !reflect.DeepEqual(evs, b.Events) {
		t.Errorf("BatchEvents:\n%+v\nwant\n%+v", evs, b.Events)
	}
	for i := range evs {
		leaf, err := wire.EncodeEvent(evs[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(leaf, b.EventCBOR(i)) {
			t.Errorf("event %d re-encodes to %x, want leaf %x", i, leaf, b.EventCBOR(i))
		}
		proof, err := b.EventProof(i)
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.VerifyEventProof(root, leaf, i, len(evs), proof); err != nil {
			t.Errorf("event %d rebuilt from SQL does not prove against the root: %v", i, err)
		}
	}
}

func TestIngestTwice(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	b := ingest(t, s, "web-1", 7, columnsBatch()...)
	tables := []string{"process_events", "network_events", "processes", "hosts", "batches"}
	before := map[string]int{}
	for _, tbl := range tables {
		before[tbl] = count(t, s, tbl)
	}
	snap := rowMaps(t, s, "SELECT * FROM processes ORDER BY pid")
	for range 2 {
		if err := s.IngestBatch(ctx, b); err != nil {
			t.Fatalf("second ingest: %v", err)
		}
	}
	for _, tbl := range tables {
		if n := count(t, s, tbl); n != before[tbl] {
			t.Errorf("%s: %d rows after ingesting the batch again, want %d", tbl, n, before[tbl])
		}
	}
	if again := rowMaps(t, s, "SELECT * FROM processes ORDER BY pid"); !reflect.DeepEqual(again, snap) {
		t.Errorf("processes changed by a replayed batch:\n%v\nwant\n%v", again, snap)
	}

	// Same (agent, seq), other content: refused, nothing written.
	other := sealed(t, "web-1", 7, []capture.Event{exec(9000, key(999, 1), key(1, 1), "/bin/evil")})
	if err := s.IngestBatch(ctx, other); !errors.Is(err, ErrBatchConflict) {
		t.Fatalf("conflicting batch: %v, want ErrBatchConflict", err)
	}
	if n := count(t, s, "process_events"); n != before["process_events"] {
		t.Errorf("conflicting batch wrote rows: %d, want %d", n, before["process_events"])
	}
	// The unique (host, batch_seq, idx) holds even for a writer that
	// bypasses the batches guard.
	_, err := s.db.Exec(`INSERT INTO process_events (host, batch_seq, idx, seq, time, kind, pid, start)
		VALUES ('web-1', 7, 0, 0, 0, 'fork', 1, 1)`)
	if err == nil || !strings.Contains(err.Error(), "UNIQUE") {
		t.Errorf("duplicate (host, batch_seq, idx) insert: %v, want a UNIQUE constraint error", err)
	}
}

// TestOutOfOrder applies the lifecycle of a process in every order, within
// one batch and spread over batches, and wants the same table each time.
func TestOutOfOrder(t *testing.T) {
	parent, child := key(50, 100), key(60, 200)
	lifecycle := []capture.Event{
		exec(1000, parent, key(1, 1), "/bin/sh", "sh"),
		fork(2000, child, parent),
		exec(3000, child, parent, "/usr/bin/id", "id", "-u"),
		exit(4000, child, 3),
	}
	want := map[string]any{"host": "h", "pid": int64(60), "start": int64(200), "ppid": int64(50), "pstart": int64(100),
		"comm": "id", "uid": int64(1000), "gid": int64(1000), "euid": int64(1000), "egid": int64(1000),
		"exe": "/usr/bin/id", "argv": `["id","-u"]`, "cmdline": "id -u", "argv_truncated": int64(0), "cwd": "/home/u",
		"tty": "", "cgroup_id": int64(0), "pid_ns": int64(0), "net_ns": int64(0), "mnt_ns": int64(0),
		"start_time": int64(2000), "exit_time": int64(4000), "exit_code": int64(3), "exit_signal": int64(0),
		"exit_core": int64(0), "seeded": int64(0), "execed": int64(1)}
	for _, order := range [][]int{{0, 1, 2, 3}, {0, 3, 2, 1}, {0, 2, 1, 3}, {0, 3, 1, 2}, {3, 2, 1, 0}, {2, 3, 0, 1}} {
		for _, split := range []bool{false, true} {
			name := fmt.Sprint(order, map[bool]string{false: "one batch", true: "a batch each"}[split])
			t.Run(name, func(t *testing.T) {
				s := openTest(t)
				var evs []capture.Event
				for _, i := range order {
					evs = append(evs, lifecycle[i])
				}
				if split {
					for i, ev := range evs {
						ingest(t, s, "h", uint64(i+1), ev)
					}
				} else {
					ingest(t, s, "h", 1, evs...)
				}
				checkRow(t, "child", rowMap(t, s, "SELECT "+procCols+" FROM processes WHERE pid = 60"), want)
				if n := count(t, s, "process_events"); n != 4 {
					t.Errorf("%d process_events, want 4", n)
				}
			})
		}
	}
}

func TestArgvNonUTF8(t *testing.T) {
	argvs := [][]string{
		{"ls", "-l"},
		{"cat", "caf\xe9.txt", "\xff\xfe", ""},
		{"x", `{"b64":"AAAA"}`, "\x00nul", "tab\there", "\u202ereversed", "emoji \U0001F469\u200d\U0001F4BB"},
		{"\x80"},
	}
	for _, argv := range argvs {
		enc, err := EncodeArgv(argv)
		if err != nil {
			t.Fatal(err)
		}
		dec, err := DecodeArgv(enc)
		if err != nil {
			t.Fatalf("DecodeArgv(%s): %v", enc, err)
		}
		if !reflect.DeepEqual(dec, argv) {
			t.Errorf("argv %q -> %s -> %q", argv, enc, dec)
		}
	}
	if got, want := Cmdline(argvs[1]), `cat caf\xe9.txt \xff\xfe `; got != want {
		t.Errorf("Cmdline = %q, want %q", got, want)
	}
	if got, want := Cmdline(argvs[2]), `x {"b64":"AAAA"} \x00nul tab\x09here \u{202e}reversed emoji `+"\U0001F469\u200d\U0001F4BB"; got != want {
		t.Errorf("Cmdline = %q, want %q", got, want)
	}

	// Through the store: exact on the way back, queryable with json_each.
	s := openTest(t)
	p := key(77, 7)
	ev := exec(1, p, key(1, 1), "/tmp/\xff/bin", argvs[1]...)
	ev.Exec.Cwd = "/tmp/\xfe"
	ingest(t, s, "h", 1, ev)
	got, ok, err := s.Process(context.Background(), "h", 77, 7)
	if err != nil || !ok {
		t.Fatalf("Process: %v %v", ok, err)
	}
	if !reflect.DeepEqual(got.Exec.Argv, argvs[1]) || got.Exec.Exe != "/tmp/\xff/bin" || got.Exec.Cwd != "/tmp/\xfe" {
		t.Errorf("stored process argv %q exe %q cwd %q, want %q %q %q", got.Exec.Argv, got.Exec.Exe, got.Exec.Cwd,
			argvs[1], "/tmp/\xff/bin", "/tmp/\xfe")
	}
	types := rowMaps(t, s, "SELECT j.type, j.value FROM processes, json_each(processes.argv) j ORDER BY j.key")
	if len(types) != 4 || types[1]["type"] != "object" || types[0]["value"] != "cat" {
		t.Errorf("json_each over argv: %v", types)
	}
	if rows := rowMaps(t, s, `SELECT pid FROM processes WHERE cmdline LIKE '%caf\xe9%'`); len(rows) != 1 {
		t.Errorf("LIKE on the escaped cmdline found %d rows, want 1", len(rows))
	}
}

func TestUnknownKindKept(t *testing.T) {
	s := openTest(t)
	evs := []capture.Event{
		exec(1, key(5, 5), key(1, 1), "/bin/a", "a"),
		{Time: 2, Kind: capture.Kind(42), Proc: key(5, 5), Comm: "a", Seq: 9},
	}
	b := ingest(t, s, "h", 3, evs...)
	if n := count(t, s, "raw_events"); n != 1 {
		t.Fatalf("%d raw_events, want 1", n)
	}
	got, _, err := s.BatchEvents(context.Background(), "h", 3)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, b.Events) {
		t.Errorf("BatchEvents with a raw event: %+v, want %+v", got, b.Events)
	}
}

func TestOpenOddPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a b?c#d%20")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "center.db")
	s, err := Open(path, testLogger())
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	defer s.Close()
	ingest(t, s, "h", 1, exec(1, key(2, 2), key(1, 1), "/bin/true"))
	if _, rows, _, err := s.Query(context.Background(), "SELECT count(*) FROM processes", nil, 0, 0); err != nil || rows[0][0] != int64(1) {
		t.Fatalf("read-only pool on %q: %v %v", path, rows, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the path given: %v", err)
	}
	for _, bad := range []string{"", ":memory:", "file:x.db"} {
		if _, err := Open(bad, nil); err == nil {
			t.Errorf("Open(%q) succeeded, want an error", bad)
		}
	}
}

// TestReadWhileIngesting: WAL lets the read-only pool read while the writer
// commits; neither side sees SQLITE_BUSY or a half-written batch.
func TestReadWhileIngesting(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	g := newFleetGen("h", 1)
	done := make(chan error, 1)
	go func() {
		for seq := uint64(1); seq <= 30; seq++ {
			if err := s.IngestBatch(ctx, g.batch(seq, 500)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for reads := 0; ; reads++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if reads == 0 {
				t.Log("ingest finished before the first read")
			}
			return
		default:
		}
		// Every stored batch is whole: its event rows number its events.
		_, rows, _, err := s.Query(ctx, `SELECT b.events, (SELECT count(*) FROM process_events e WHERE e.host = b.host AND e.batch_seq = b.seq)
			+ (SELECT count(*) FROM network_events e WHERE e.host = b.host AND e.batch_seq = b.seq) FROM batches b`, nil, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r[0] != r[1] {
				t.Fatalf("a batch of %v events has %v rows: a reader saw a partial batch", r[0], r[1])
			}
		}
		if _, err := s.Descendants(ctx, "h", 1, 1, 0); err != nil {
			t.Fatal(err)
		}
	}
}
