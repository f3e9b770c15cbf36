package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// migration i brings the schema from user_version i to i+1: its SQL, then
// data, for what SQL alone cannot move, in the same transaction. Append
// only: a released migration never changes, since databases in the field
// have already run it.
type migration struct {
	sql  string
	data func(ctx context.Context, tx *sql.Tx) error
}

var migrations = []migration{
	{sql: schemaV1},
	{sql: migrationV2, data: refileRawEvents},
	{sql: migrationV3},
}

// schema is the current schema whole: what a new database is created with
// (in one step, not by replaying migrations) and what TableDDL reads.
// TestMigrationPath checks that a database migrated from every earlier
// version has the same tables, columns, indexes and constraints.
const schema = `
CREATE TABLE hosts (
	agent_id    TEXT PRIMARY KEY,
	kind        TEXT NOT NULL DEFAULT 'agent' CHECK (kind IN ('agent', 'proxy')),
	version     TEXT NOT NULL DEFAULT '',
	addresses   TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(addresses)), -- JSON array of IP strings
	site_tag    TEXT NOT NULL DEFAULT '',
	proxy_path  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(proxy_path)), -- node ids, nearest the center first
	first_seen  INTEGER NOT NULL,
	last_seen   INTEGER NOT NULL,  -- center clock: when the center last heard of the host
	last_event  INTEGER,           -- agent clock: newest event time received
	health      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(health)),
	health_time INTEGER,
	lost_events TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(lost_events)) -- cause -> count
) STRICT;

-- The addresses of hosts.addresses, indexed: cross-host stitching asks which
-- enrolled host owns the destination of a connect. Kept by UpsertHost.
CREATE TABLE host_addresses (
	ip       TEXT NOT NULL,
	agent_id TEXT NOT NULL REFERENCES hosts (agent_id) ON DELETE CASCADE,
	PRIMARY KEY (ip, agent_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX host_addresses_agent ON host_addresses (agent_id);

-- One row per ingested batch: the idempotency guard and, with root, what an
-- event's inclusion proof is checked against.
CREATE TABLE batches (
	host     TEXT NOT NULL,
	seq      INTEGER NOT NULL,
	ts_start INTEGER NOT NULL,
	ts_end   INTEGER NOT NULL,
	events   INTEGER NOT NULL,
	root     BLOB NOT NULL,     -- RFC 6962 Merkle tree hash over the events' canonical CBOR
	ingested INTEGER NOT NULL,  -- center clock
	purged   INTEGER,           -- retention removed its events: the ledger entry that recorded it; NULL while stored
	PRIMARY KEY (host, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX batches_ingested ON batches (ingested);
-- Retention: a batch is as old as its newest event, by the agent's clock
-- but never newer than its arrival (purge.go).
CREATE INDEX batches_due ON batches (host, min(ts_end, ingested), seq) WHERE purged IS NULL;

-- The process table: one row per process incarnation, as known from its
-- fork, last exec and exit (same rules as the agent's table in store/).
-- A rowid table (id in creation order), keyed by UNIQUE (host, pid, start):
-- a new process's wide row is appended and only the narrow key indexes take
-- a write at a random place (as a WITHOUT ROWID table, every new process
-- dirtied a random leaf of the whole table).
CREATE TABLE processes (
	id             INTEGER PRIMARY KEY,
	host           TEXT NOT NULL,
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,  -- clock ticks since boot
	ppid           INTEGER,           -- parent; NULL when unknown
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	uid            INTEGER NOT NULL DEFAULT 0,
	gid            INTEGER NOT NULL DEFAULT 0,
	euid           INTEGER NOT NULL DEFAULT 0,
	egid           INTEGER NOT NULL DEFAULT 0,
	exe            TEXT NOT NULL DEFAULT '',
	argv           TEXT,              -- JSON array, see EncodeArgv; NULL when none
	cmdline        TEXT NOT NULL DEFAULT '',
	argv_truncated INTEGER NOT NULL DEFAULT 0,
	cwd            TEXT NOT NULL DEFAULT '',
	tty            TEXT NOT NULL DEFAULT '',
	cgroup_id      INTEGER NOT NULL DEFAULT 0,
	pid_ns         INTEGER NOT NULL DEFAULT 0,
	net_ns         INTEGER NOT NULL DEFAULT 0,
	mnt_ns         INTEGER NOT NULL DEFAULT 0,
	start_time     INTEGER,           -- wall clock; NULL when no fork or exec was seen
	exit_time      INTEGER,           -- NULL while alive
	exit_code      INTEGER,           -- NULL unless the exit status is known
	exit_signal    INTEGER,
	exit_core      INTEGER,
	seeded         INTEGER NOT NULL DEFAULT 0,
	execed         INTEGER NOT NULL DEFAULT 0,
	UNIQUE (host, pid, start)
) STRICT;
-- Children of a process; covering for the descendant walk.
CREATE INDEX processes_parent ON processes (host, ppid, pstart, pid, start);
CREATE INDEX processes_start_time ON processes (start_time);
CREATE INDEX processes_live ON processes (host, pid) WHERE exit_time IS NULL;
CREATE INDEX processes_exited ON processes (host, exit_time) WHERE exit_time IS NOT NULL;

-- Every fork, exec and exit exactly as the agent reported it. Exec fields are
-- NULL unless the event carried an image (uid IS NOT NULL); exit fields NULL
-- unless it carried a status; ppid/pstart NULL when the event named no parent.
-- Parent lookups go through processes (processes_parent), then here by
-- (host, pid, start): an index on ppid here would cost every insert a random
-- b-tree write for a question the process table answers.
CREATE TABLE process_events (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	host           TEXT NOT NULL,
	batch_seq      INTEGER NOT NULL,
	idx            INTEGER NOT NULL,
	seq            INTEGER NOT NULL,  -- the agent's event seq
	time           INTEGER NOT NULL,
	kind           TEXT NOT NULL CHECK (kind IN ('fork', 'exec', 'exit')),
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,
	ppid           INTEGER,
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	source         TEXT NOT NULL DEFAULT '',
	uid            INTEGER,
	gid            INTEGER,
	euid           INTEGER,
	egid           INTEGER,
	exe            TEXT,
	argv           TEXT,
	cmdline        TEXT,
	argv_truncated INTEGER,
	cwd            TEXT,
	tty            TEXT,
	cgroup_id      INTEGER,
	pid_ns         INTEGER,
	net_ns         INTEGER,
	mnt_ns         INTEGER,
	exit_code      INTEGER,
	exit_signal    INTEGER,
	exit_core      INTEGER,
	trace_id       TEXT,
	trace_seq      INTEGER,
	env            TEXT,              -- traced exec: the environment, JSON array as argv
	env_truncated  INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX process_events_time ON process_events (time);
CREATE INDEX process_events_proc ON process_events (host, pid, start);
CREATE INDEX process_events_trace ON process_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- connect, accept, close and (traced) socket create. src is the owning
-- process's end. IPs are netip text, IPv4-mapped IPv6 stored unmapped with
-- mapped bit 1 (src) / 2 (dst) set, so one spelling finds every use.
CREATE TABLE network_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      TEXT NOT NULL CHECK (kind IN ('connect', 'accept', 'close', 'socket')),
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	ppid      INTEGER,
	pstart    INTEGER,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	proto     INTEGER,           -- 6 tcp, 17 udp; NULL when the event had no tuple
	family    INTEGER,           -- socket create: address family
	sock_type INTEGER,           -- socket create: SOCK_STREAM, ...
	src_ip    TEXT,
	src_port  INTEGER,
	dst_ip    TEXT,
	dst_port  INTEGER,
	mapped    INTEGER NOT NULL DEFAULT 0,
	result    INTEGER,           -- traced socket(2) or connect outcome: fd, 0 or -errno; NULL otherwise
	trace_id  TEXT,
	trace_seq INTEGER,
	sock_proto INTEGER,          -- socket(2) protocol argument, with result
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX network_events_time ON network_events (time);
CREATE INDEX network_events_proc ON network_events (host, pid, start);
CREATE INDEX network_events_dst ON network_events (dst_ip, dst_port);
CREATE INDEX network_events_trace ON network_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Focused-trace file activity: open, create, rename (path -> path2), unlink.
CREATE TABLE file_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      TEXT NOT NULL CHECK (kind IN ('open', 'create', 'rename', 'unlink')), -- create: opened with O_CREAT
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	path      TEXT NOT NULL,
	path2     TEXT,              -- rename target
	flags     INTEGER,           -- open flags
	mode      INTEGER,
	inode     INTEGER,
	dev       INTEGER,
	result    INTEGER,           -- fd or -errno
	trace_id  TEXT,
	trace_seq INTEGER,
	ppid      INTEGER,
	pstart    INTEGER,
	path_unread INTEGER NOT NULL DEFAULT 0, -- a path could not be read from the process
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX file_events_time ON file_events (time);
CREATE INDEX file_events_proc ON file_events (host, pid, start);
CREATE INDEX file_events_path ON file_events (path);
CREATE INDEX file_events_trace ON file_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Hashes of executed binaries (and of small file artifacts) from traces.
CREATE TABLE exe_hashes (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	path      TEXT NOT NULL,
	inode     INTEGER,
	size      INTEGER,
	blake3    BLOB,
	sha256    BLOB,
	trace_id  TEXT,
	trace_seq INTEGER,
	seq       INTEGER NOT NULL DEFAULT 0,
	ppid      INTEGER,
	pstart    INTEGER,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	dev       INTEGER,
	cached    INTEGER NOT NULL DEFAULT 0, -- digests from the agent's cache, the file not read again
	error     TEXT,                       -- why there are no digests
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX exe_hashes_proc ON exe_hashes (host, pid, start);
CREATE INDEX exe_hashes_sha256 ON exe_hashes (sha256);
CREATE INDEX exe_hashes_blake3 ON exe_hashes (blake3);
CREATE INDEX exe_hashes_trace ON exe_hashes (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Small memory regions captured by a trace when policy allows: the Mem of
-- the event at (host, batch_seq, idx), whose own row is in its kind's table.
CREATE TABLE mem_snippets (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	addr      INTEGER NOT NULL,
	region    TEXT NOT NULL DEFAULT '',  -- e.g. the mapping's path
	data      BLOB NOT NULL,
	trace_id  TEXT,
	trace_seq INTEGER,
	error     TEXT,              -- why data is short or empty
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX mem_snippets_proc ON mem_snippets (host, pid, start);
CREATE INDEX mem_snippets_trace ON mem_snippets (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Points in a trace's life: start or resume, sampled (events were dropped
-- just before, reason names the cap, dropped how many), stop (reason, and
-- the totals). pid/start is the trace's root on that host.
CREATE TABLE trace_notes (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	ppid      INTEGER,
	pstart    INTEGER,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	what      TEXT NOT NULL,     -- start, resume, sampled, stop
	reason    TEXT NOT NULL DEFAULT '',
	dropped   INTEGER NOT NULL DEFAULT 0,
	events    INTEGER NOT NULL DEFAULT 0,
	bytes     INTEGER NOT NULL DEFAULT 0,
	depth     INTEGER NOT NULL DEFAULT 0,
	pids      INTEGER NOT NULL DEFAULT 0,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX trace_notes_trace ON trace_notes (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Events of kinds this schema version has no table for (a newer agent), or
-- of a shape their kind's table cannot hold exactly, as their canonical
-- CBOR, so nothing signed is dropped or changed.
CREATE TABLE raw_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      INTEGER NOT NULL,
	event     BLOB NOT NULL,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX raw_events_trace ON raw_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

CREATE TABLE operators (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL DEFAULT '',
	role        TEXT NOT NULL DEFAULT 'analyst',  -- e.g. analyst, approver, admin
	public_key  BLOB,                             -- Ed25519 key that signs the operator's commands
	cert_sha256 BLOB,
	created     INTEGER NOT NULL,
	disabled    INTEGER                           -- time disabled; NULL when active
) STRICT;

-- A focused trace. The same trace_id follows the lineage across hosts
-- (trace_targets); caps is JSON (max_duration_s, max_bytes, max_eps).
CREATE TABLE traces (
	trace_id     TEXT PRIMARY KEY,
	host         TEXT NOT NULL,      -- the first target
	pid          INTEGER NOT NULL,
	start        INTEGER NOT NULL,
	depth        INTEGER NOT NULL,
	flags        INTEGER NOT NULL DEFAULT 0,  -- bit 0 cmdlines, 1 network, 2 file metadata, 3 memory
	caps         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(caps)),
	state        TEXT NOT NULL DEFAULT 'pending'
	             CHECK (state IN ('pending', 'approved', 'active', 'stopped', 'expired', 'refused', 'failed')),
	created      INTEGER NOT NULL,
	started      INTEGER,
	stopped      INTEGER,
	initiated_by TEXT NOT NULL,      -- operator id, or 'rule:<id>' for policy-started traces
	reason       TEXT NOT NULL DEFAULT '',
	stop_reason  TEXT,
	alert_id     INTEGER,            -- the alert that prompted it, if any
	command      BLOB                -- the signed TraceCommand as sent
) STRICT;
CREATE INDEX traces_target ON traces (host, pid, start);
CREATE INDEX traces_state ON traces (state);

CREATE TABLE trace_targets (
	trace_id TEXT NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
	host     TEXT NOT NULL,
	pid      INTEGER NOT NULL,
	start    INTEGER NOT NULL,
	link_id  INTEGER,                -- the link that brought the trace here; NULL for the first target
	state    TEXT NOT NULL DEFAULT 'pending',
	added    INTEGER NOT NULL,
	PRIMARY KEY (trace_id, host, pid, start)
) STRICT, WITHOUT ROWID;
CREATE INDEX trace_targets_proc ON trace_targets (host, pid, start);

-- A traced connect to an address owned by another enrolled host. to_* is
-- NULL until the accepting process is known.
CREATE TABLE links (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	trace_id   TEXT NOT NULL,
	time       INTEGER NOT NULL,
	from_host  TEXT NOT NULL,
	from_pid   INTEGER NOT NULL,
	from_start INTEGER NOT NULL,
	to_host    TEXT NOT NULL,
	to_pid     INTEGER,
	to_start   INTEGER,
	proto      INTEGER NOT NULL,
	src_ip     TEXT NOT NULL,
	src_port   INTEGER NOT NULL,
	dst_ip     TEXT NOT NULL,
	dst_port   INTEGER NOT NULL,
	from_event INTEGER,              -- network_events.id of the connect
	to_event   INTEGER,              -- network_events.id of the accept
	followed   INTEGER,              -- time the trace was fanned out to to_host; NULL if not (yet)
	UNIQUE (trace_id, from_host, from_pid, from_start, proto, src_ip, src_port, dst_ip, dst_port)
) STRICT;
CREATE INDEX links_trace ON links (trace_id);
CREATE INDEX links_from ON links (from_host, from_pid, from_start);
CREATE INDEX links_to ON links (to_host, to_pid, to_start);
-- Links still waiting for their accept, by the host that should report it.
CREATE INDEX links_open ON links (to_host, time) WHERE to_event IS NULL;

-- One alert per (rule, process): later matches bump count and last_time.
CREATE TABLE alerts (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	rule_id   TEXT NOT NULL,
	severity  TEXT NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
	technique TEXT NOT NULL DEFAULT '',  -- ATT&CK id
	host      TEXT NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	time      INTEGER NOT NULL,          -- first match (event time)
	last_time INTEGER NOT NULL,
	count     INTEGER NOT NULL DEFAULT 1,
	context   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(context)),
	state     TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'closed', 'suppressed')),
	trace_id  TEXT,
	UNIQUE (rule_id, host, pid, start)
) STRICT;
CREATE INDEX alerts_time ON alerts (time);
CREATE INDEX alerts_proc ON alerts (host, pid, start);
CREATE INDEX alerts_state ON alerts (state, severity);

-- Requests that need a second operator: starting a trace, revealing masked
-- command lines, exporting a package, loading a rule pack.
CREATE TABLE approvals (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	subject_kind TEXT NOT NULL CHECK (subject_kind IN ('trace', 'reveal', 'export', 'rule_pack', 'follow')),
	subject_id   TEXT NOT NULL,
	requested_by TEXT NOT NULL REFERENCES operators (id),
	requested_at INTEGER NOT NULL,
	reason       TEXT NOT NULL DEFAULT '',
	decision     TEXT NOT NULL DEFAULT 'pending' CHECK (decision IN ('pending', 'approved', 'denied', 'expired')),
	decided_by   TEXT REFERENCES operators (id),
	decided_at   INTEGER,
	signature    BLOB,                   -- the decider's signature over the request
	CHECK (decided_by IS NULL OR decided_by <> requested_by)
) STRICT;
CREATE INDEX approvals_subject ON approvals (subject_kind, subject_id);
CREATE INDEX approvals_pending ON approvals (requested_at) WHERE decision = 'pending';

-- Incremental rule evaluation: a rule resumes after the last row id it saw
-- in each table it reads (rule_cursors).
CREATE TABLE rule_runs (
	rule_id     TEXT PRIMARY KEY,
	pack        TEXT NOT NULL DEFAULT '',
	last_run    INTEGER,
	last_ns     INTEGER,                 -- duration of the last run
	last_error  TEXT,
	runs        INTEGER NOT NULL DEFAULT 0,
	matches     INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE rule_cursors (
	rule_id TEXT NOT NULL REFERENCES rule_runs (rule_id) ON DELETE CASCADE,
	tbl     TEXT NOT NULL,
	last_id INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (rule_id, tbl)
) STRICT, WITHOUT ROWID;
` + retentionRunsDDL

// retentionRunsDDL: one row per retention pass over a site (purge.go), for
// admins to query: when it ran, up to what, and what it removed.
const retentionRunsDDL = `
CREATE TABLE retention_runs (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	site      TEXT NOT NULL,
	window_s  INTEGER NOT NULL,
	cutoff    INTEGER NOT NULL,            -- batches older than this had their events removed
	started   INTEGER NOT NULL,            -- center clock
	finished  INTEGER,                     -- NULL while running, or if it was interrupted
	batches   INTEGER NOT NULL DEFAULT 0,
	events    INTEGER NOT NULL DEFAULT 0,  -- event rows removed
	bytes     INTEGER NOT NULL DEFAULT 0,  -- sealed batch bytes removed from the batch store
	processes INTEGER NOT NULL DEFAULT 0,
	links     INTEGER NOT NULL DEFAULT 0,
	held      INTEGER NOT NULL DEFAULT 0,  -- due batches kept for an open or held trace
	error     TEXT
) STRICT;
`

// migrationV3: retention (purge.go). A batch whose events were purged
// keeps its row (the idempotency guard, with its root and counts), marked
// with the ledger entry that recorded the purge; indexes find what is due
// per host; retention_runs records each pass.
const migrationV3 = `
ALTER TABLE batches ADD COLUMN purged INTEGER;
CREATE INDEX batches_due ON batches (host, min(ts_end, ingested), seq) WHERE purged IS NULL;
CREATE INDEX processes_exited ON processes (host, exit_time) WHERE exit_time IS NOT NULL;
` + retentionRunsDDL

// migrationV2: file, socket, hash, memory and note events of focused traces
// get typed rows (trace_notes is new; exe_hashes, mem_snippets and
// file_events gain the columns an exact rebuild of the event needs;
// process_events gains the traced environment, network_events socket(2)'s
// protocol, raw_events the trace columns); links waiting for an accept get
// an index; and processes becomes a rowid table (see schema). Columns are
// added in the order schema lists them at the end of their tables.
const migrationV2 = `
-- processes becomes a rowid table (see the current schema): copied in
-- creation order as far as it is known.
CREATE TABLE processes_v2 (
	id             INTEGER PRIMARY KEY,
	host           TEXT NOT NULL,
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,
	ppid           INTEGER,
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	uid            INTEGER NOT NULL DEFAULT 0,
	gid            INTEGER NOT NULL DEFAULT 0,
	euid           INTEGER NOT NULL DEFAULT 0,
	egid           INTEGER NOT NULL DEFAULT 0,
	exe            TEXT NOT NULL DEFAULT '',
	argv           TEXT,
	cmdline        TEXT NOT NULL DEFAULT '',
	argv_truncated INTEGER NOT NULL DEFAULT 0,
	cwd            TEXT NOT NULL DEFAULT '',
	tty            TEXT NOT NULL DEFAULT '',
	cgroup_id      INTEGER NOT NULL DEFAULT 0,
	pid_ns         INTEGER NOT NULL DEFAULT 0,
	net_ns         INTEGER NOT NULL DEFAULT 0,
	mnt_ns         INTEGER NOT NULL DEFAULT 0,
	start_time     INTEGER,
	exit_time      INTEGER,
	exit_code      INTEGER,
	exit_signal    INTEGER,
	exit_core      INTEGER,
	seeded         INTEGER NOT NULL DEFAULT 0,
	execed         INTEGER NOT NULL DEFAULT 0,
	UNIQUE (host, pid, start)
) STRICT;
INSERT INTO processes_v2 (host, pid, start, ppid, pstart, comm, uid, gid, euid, egid, exe, argv, cmdline,
	argv_truncated, cwd, tty, cgroup_id, pid_ns, net_ns, mnt_ns, start_time, exit_time, exit_code,
	exit_signal, exit_core, seeded, execed)
SELECT host, pid, start, ppid, pstart, comm, uid, gid, euid, egid, exe, argv, cmdline,
	argv_truncated, cwd, tty, cgroup_id, pid_ns, net_ns, mnt_ns, start_time, exit_time, exit_code,
	exit_signal, exit_core, seeded, execed
FROM processes ORDER BY coalesce(start_time, 0), host, start, pid;
DROP TABLE processes;
ALTER TABLE processes_v2 RENAME TO processes;
CREATE INDEX processes_parent ON processes (host, ppid, pstart, pid, start);
CREATE INDEX processes_start_time ON processes (start_time);
CREATE INDEX processes_live ON processes (host, pid) WHERE exit_time IS NULL;

ALTER TABLE process_events ADD COLUMN env TEXT;
ALTER TABLE process_events ADD COLUMN env_truncated INTEGER;

ALTER TABLE network_events ADD COLUMN sock_proto INTEGER;

ALTER TABLE file_events ADD COLUMN ppid INTEGER;
ALTER TABLE file_events ADD COLUMN pstart INTEGER;
ALTER TABLE file_events ADD COLUMN path_unread INTEGER NOT NULL DEFAULT 0;

ALTER TABLE exe_hashes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE exe_hashes ADD COLUMN ppid INTEGER;
ALTER TABLE exe_hashes ADD COLUMN pstart INTEGER;
ALTER TABLE exe_hashes ADD COLUMN comm TEXT NOT NULL DEFAULT '';
ALTER TABLE exe_hashes ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE exe_hashes ADD COLUMN dev INTEGER;
ALTER TABLE exe_hashes ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
ALTER TABLE exe_hashes ADD COLUMN error TEXT;
CREATE INDEX exe_hashes_trace ON exe_hashes (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

ALTER TABLE mem_snippets ADD COLUMN error TEXT;
CREATE INDEX mem_snippets_trace ON mem_snippets (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

CREATE TABLE trace_notes (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	ppid      INTEGER,
	pstart    INTEGER,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	what      TEXT NOT NULL,
	reason    TEXT NOT NULL DEFAULT '',
	dropped   INTEGER NOT NULL DEFAULT 0,
	events    INTEGER NOT NULL DEFAULT 0,
	bytes     INTEGER NOT NULL DEFAULT 0,
	depth     INTEGER NOT NULL DEFAULT 0,
	pids      INTEGER NOT NULL DEFAULT 0,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX trace_notes_trace ON trace_notes (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

ALTER TABLE raw_events ADD COLUMN trace_id TEXT;
ALTER TABLE raw_events ADD COLUMN trace_seq INTEGER;
CREATE INDEX raw_events_trace ON raw_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

CREATE INDEX links_open ON links (to_host, time) WHERE to_event IS NULL;
`

// schemaV1 is the first schema, frozen (see schema for the current one). Conventions: times are INTEGER Unix
// nanoseconds, NULL when unknown; (host, pid, start) names a process, host
// being the agent id; event tables have an AUTOINCREMENT id, so that a rule's
// cursor (rule_cursors.last_id) never sees an id twice even after retention
// empties a table; and (host, batch_seq, idx) locates the event in the
// signed batch it came in (UNIQUE, so that no event can be stored twice).
// trace_id / trace_seq are NULL for baseline events.
const schemaV1 = `
CREATE TABLE hosts (
	agent_id    TEXT PRIMARY KEY,
	kind        TEXT NOT NULL DEFAULT 'agent' CHECK (kind IN ('agent', 'proxy')),
	version     TEXT NOT NULL DEFAULT '',
	addresses   TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(addresses)), -- JSON array of IP strings
	site_tag    TEXT NOT NULL DEFAULT '',
	proxy_path  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(proxy_path)), -- node ids, nearest the center first
	first_seen  INTEGER NOT NULL,
	last_seen   INTEGER NOT NULL,  -- center clock: when the center last heard of the host
	last_event  INTEGER,           -- agent clock: newest event time received
	health      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(health)),
	health_time INTEGER,
	lost_events TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(lost_events)) -- cause -> count
) STRICT;

-- The addresses of hosts.addresses, indexed: cross-host stitching asks which
-- enrolled host owns the destination of a connect. Kept by UpsertHost.
CREATE TABLE host_addresses (
	ip       TEXT NOT NULL,
	agent_id TEXT NOT NULL REFERENCES hosts (agent_id) ON DELETE CASCADE,
	PRIMARY KEY (ip, agent_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX host_addresses_agent ON host_addresses (agent_id);

-- One row per ingested batch: the idempotency guard and, with root, what an
-- event's inclusion proof is checked against.
CREATE TABLE batches (
	host     TEXT NOT NULL,
	seq      INTEGER NOT NULL,
	ts_start INTEGER NOT NULL,
	ts_end   INTEGER NOT NULL,
	events   INTEGER NOT NULL,
	root     BLOB NOT NULL,     -- RFC 6962 Merkle tree hash over the events' canonical CBOR
	ingested INTEGER NOT NULL,  -- center clock
	PRIMARY KEY (host, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX batches_ingested ON batches (ingested);

-- The process table: one row per process incarnation, as known from its
-- fork, last exec and exit (same rules as the agent's table in store/).
CREATE TABLE processes (
	host           TEXT NOT NULL,
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,  -- clock ticks since boot
	ppid           INTEGER,           -- parent; NULL when unknown
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	uid            INTEGER NOT NULL DEFAULT 0,
	gid            INTEGER NOT NULL DEFAULT 0,
	euid           INTEGER NOT NULL DEFAULT 0,
	egid           INTEGER NOT NULL DEFAULT 0,
	exe            TEXT NOT NULL DEFAULT '',
	argv           TEXT,              -- JSON array, see EncodeArgv; NULL when none
	cmdline        TEXT NOT NULL DEFAULT '',
	argv_truncated INTEGER NOT NULL DEFAULT 0,
	cwd            TEXT NOT NULL DEFAULT '',
	tty            TEXT NOT NULL DEFAULT '',
	cgroup_id      INTEGER NOT NULL DEFAULT 0,
	pid_ns         INTEGER NOT NULL DEFAULT 0,
	net_ns         INTEGER NOT NULL DEFAULT 0,
	mnt_ns         INTEGER NOT NULL DEFAULT 0,
	start_time     INTEGER,           -- wall clock; NULL when no fork or exec was seen
	exit_time      INTEGER,           -- NULL while alive
	exit_code      INTEGER,           -- NULL unless the exit status is known
	exit_signal    INTEGER,
	exit_core      INTEGER,
	seeded         INTEGER NOT NULL DEFAULT 0,
	execed         INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (host, pid, start)
) STRICT, WITHOUT ROWID;
-- Children of a process; covering for the descendant walk (the primary key
-- columns ride along in a WITHOUT ROWID table's index).
CREATE INDEX processes_parent ON processes (host, ppid, pstart);
CREATE INDEX processes_start_time ON processes (start_time);
CREATE INDEX processes_live ON processes (host, pid) WHERE exit_time IS NULL;

-- Every fork, exec and exit exactly as the agent reported it. Exec fields are
-- NULL unless the event carried an image (uid IS NOT NULL); exit fields NULL
-- unless it carried a status; ppid/pstart NULL when the event named no parent.
-- Parent lookups go through processes (processes_parent), then here by
-- (host, pid, start): an index on ppid here would cost every insert a random
-- b-tree write for a question the process table answers.
CREATE TABLE process_events (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	host           TEXT NOT NULL,
	batch_seq      INTEGER NOT NULL,
	idx            INTEGER NOT NULL,
	seq            INTEGER NOT NULL,  -- the agent's event seq
	time           INTEGER NOT NULL,
	kind           TEXT NOT NULL CHECK (kind IN ('fork', 'exec', 'exit')),
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,
	ppid           INTEGER,
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	source         TEXT NOT NULL DEFAULT '',
	uid            INTEGER,
	gid            INTEGER,
	euid           INTEGER,
	egid           INTEGER,
	exe            TEXT,
	argv           TEXT,
	cmdline        TEXT,
	argv_truncated INTEGER,
	cwd            TEXT,
	tty            TEXT,
	cgroup_id      INTEGER,
	pid_ns         INTEGER,
	net_ns         INTEGER,
	mnt_ns         INTEGER,
	exit_code      INTEGER,
	exit_signal    INTEGER,
	exit_core      INTEGER,
	trace_id       TEXT,
	trace_seq      INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX process_events_time ON process_events (time);
CREATE INDEX process_events_proc ON process_events (host, pid, start);
CREATE INDEX process_events_trace ON process_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- connect, accept, close and (traced) socket create. src is the owning
-- process's end. IPs are netip text, IPv4-mapped IPv6 stored unmapped with
-- mapped bit 1 (src) / 2 (dst) set, so one spelling finds every use.
CREATE TABLE network_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      TEXT NOT NULL CHECK (kind IN ('connect', 'accept', 'close', 'socket')),
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	ppid      INTEGER,
	pstart    INTEGER,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	proto     INTEGER,           -- 6 tcp, 17 udp; NULL when the event had no tuple
	family    INTEGER,           -- socket create: address family
	sock_type INTEGER,           -- socket create: SOCK_STREAM, ...
	src_ip    TEXT,
	src_port  INTEGER,
	dst_ip    TEXT,
	dst_port  INTEGER,
	mapped    INTEGER NOT NULL DEFAULT 0,
	result    INTEGER,           -- syscall result for traced events
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX network_events_time ON network_events (time);
CREATE INDEX network_events_proc ON network_events (host, pid, start);
CREATE INDEX network_events_dst ON network_events (dst_ip, dst_port);
CREATE INDEX network_events_trace ON network_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Focused-trace file activity: open, create, rename (path -> path2), unlink.
CREATE TABLE file_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      TEXT NOT NULL CHECK (kind IN ('open', 'create', 'rename', 'unlink')),
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	path      TEXT NOT NULL,
	path2     TEXT,              -- rename target
	flags     INTEGER,           -- open flags
	mode      INTEGER,
	inode     INTEGER,
	dev       INTEGER,
	result    INTEGER,           -- fd or -errno
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX file_events_time ON file_events (time);
CREATE INDEX file_events_proc ON file_events (host, pid, start);
CREATE INDEX file_events_path ON file_events (path);
CREATE INDEX file_events_trace ON file_events (trace_id, trace_seq) WHERE trace_id IS NOT NULL;

-- Hashes of executed binaries (and of small file artifacts) from traces.
CREATE TABLE exe_hashes (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	path      TEXT NOT NULL,
	inode     INTEGER,
	size      INTEGER,
	blake3    BLOB,
	sha256    BLOB,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX exe_hashes_proc ON exe_hashes (host, pid, start);
CREATE INDEX exe_hashes_sha256 ON exe_hashes (sha256);
CREATE INDEX exe_hashes_blake3 ON exe_hashes (blake3);

-- Small memory regions captured by a trace when policy allows.
CREATE TABLE mem_snippets (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	addr      INTEGER NOT NULL,
	region    TEXT NOT NULL DEFAULT '',  -- e.g. the mapping's path
	data      BLOB NOT NULL,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX mem_snippets_proc ON mem_snippets (host, pid, start);

-- Events of kinds this schema version has no table for (a newer agent), as
-- their canonical CBOR, so nothing signed is dropped.
CREATE TABLE raw_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      INTEGER NOT NULL,
	event     BLOB NOT NULL,
	UNIQUE (host, batch_seq, idx)
) STRICT;

CREATE TABLE operators (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL DEFAULT '',
	role        TEXT NOT NULL DEFAULT 'analyst',  -- e.g. analyst, approver, admin
	public_key  BLOB,                             -- Ed25519 key that signs the operator's commands
	cert_sha256 BLOB,
	created     INTEGER NOT NULL,
	disabled    INTEGER                           -- time disabled; NULL when active
) STRICT;

-- A focused trace. The same trace_id follows the lineage across hosts
-- (trace_targets); caps is JSON (max_duration_s, max_bytes, max_eps).
CREATE TABLE traces (
	trace_id     TEXT PRIMARY KEY,
	host         TEXT NOT NULL,      -- the first target
	pid          INTEGER NOT NULL,
	start        INTEGER NOT NULL,
	depth        INTEGER NOT NULL,
	flags        INTEGER NOT NULL DEFAULT 0,  -- bit 0 cmdlines, 1 network, 2 file metadata, 3 memory
	caps         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(caps)),
	state        TEXT NOT NULL DEFAULT 'pending'
	             CHECK (state IN ('pending', 'approved', 'active', 'stopped', 'expired', 'refused', 'failed')),
	created      INTEGER NOT NULL,
	started      INTEGER,
	stopped      INTEGER,
	initiated_by TEXT NOT NULL,      -- operator id, or 'rule:<id>' for policy-started traces
	reason       TEXT NOT NULL DEFAULT '',
	stop_reason  TEXT,
	alert_id     INTEGER,            -- the alert that prompted it, if any
	command      BLOB                -- the signed TraceCommand as sent
) STRICT;
CREATE INDEX traces_target ON traces (host, pid, start);
CREATE INDEX traces_state ON traces (state);

CREATE TABLE trace_targets (
	trace_id TEXT NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
	host     TEXT NOT NULL,
	pid      INTEGER NOT NULL,
	start    INTEGER NOT NULL,
	link_id  INTEGER,                -- the link that brought the trace here; NULL for the first target
	state    TEXT NOT NULL DEFAULT 'pending',
	added    INTEGER NOT NULL,
	PRIMARY KEY (trace_id, host, pid, start)
) STRICT, WITHOUT ROWID;
CREATE INDEX trace_targets_proc ON trace_targets (host, pid, start);

-- A traced connect to an address owned by another enrolled host. to_* is
-- NULL until the accepting process is known.
CREATE TABLE links (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	trace_id   TEXT NOT NULL,
	time       INTEGER NOT NULL,
	from_host  TEXT NOT NULL,
	from_pid   INTEGER NOT NULL,
	from_start INTEGER NOT NULL,
	to_host    TEXT NOT NULL,
	to_pid     INTEGER,
	to_start   INTEGER,
	proto      INTEGER NOT NULL,
	src_ip     TEXT NOT NULL,
	src_port   INTEGER NOT NULL,
	dst_ip     TEXT NOT NULL,
	dst_port   INTEGER NOT NULL,
	from_event INTEGER,              -- network_events.id of the connect
	to_event   INTEGER,              -- network_events.id of the accept
	followed   INTEGER,              -- time the trace was fanned out to to_host; NULL if not (yet)
	UNIQUE (trace_id, from_host, from_pid, from_start, proto, src_ip, src_port, dst_ip, dst_port)
) STRICT;
CREATE INDEX links_trace ON links (trace_id);
CREATE INDEX links_from ON links (from_host, from_pid, from_start);
CREATE INDEX links_to ON links (to_host, to_pid, to_start);

-- One alert per (rule, process): later matches bump count and last_time.
CREATE TABLE alerts (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	rule_id   TEXT NOT NULL,
	severity  TEXT NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
	technique TEXT NOT NULL DEFAULT '',  -- ATT&CK id
	host      TEXT NOT NULL,
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	time      INTEGER NOT NULL,          -- first match (event time)
	last_time INTEGER NOT NULL,
	count     INTEGER NOT NULL DEFAULT 1,
	context   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(context)),
	state     TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'closed', 'suppressed')),
	trace_id  TEXT,
	UNIQUE (rule_id, host, pid, start)
) STRICT;
CREATE INDEX alerts_time ON alerts (time);
CREATE INDEX alerts_proc ON alerts (host, pid, start);
CREATE INDEX alerts_state ON alerts (state, severity);

-- Requests that need a second operator: starting a trace, revealing masked
-- command lines, exporting a package, loading a rule pack.
CREATE TABLE approvals (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	subject_kind TEXT NOT NULL CHECK (subject_kind IN ('trace', 'reveal', 'export', 'rule_pack', 'follow')),
	subject_id   TEXT NOT NULL,
	requested_by TEXT NOT NULL REFERENCES operators (id),
	requested_at INTEGER NOT NULL,
	reason       TEXT NOT NULL DEFAULT '',
	decision     TEXT NOT NULL DEFAULT 'pending' CHECK (decision IN ('pending', 'approved', 'denied', 'expired')),
	decided_by   TEXT REFERENCES operators (id),
	decided_at   INTEGER,
	signature    BLOB,                   -- the decider's signature over the request
	CHECK (decided_by IS NULL OR decided_by <> requested_by)
) STRICT;
CREATE INDEX approvals_subject ON approvals (subject_kind, subject_id);
CREATE INDEX approvals_pending ON approvals (requested_at) WHERE decision = 'pending';

-- Incremental rule evaluation: a rule resumes after the last row id it saw
-- in each table it reads (rule_cursors).
CREATE TABLE rule_runs (
	rule_id     TEXT PRIMARY KEY,
	pack        TEXT NOT NULL DEFAULT '',
	last_run    INTEGER,
	last_ns     INTEGER,                 -- duration of the last run
	last_error  TEXT,
	runs        INTEGER NOT NULL DEFAULT 0,
	matches     INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE rule_cursors (
	rule_id TEXT NOT NULL REFERENCES rule_runs (rule_id) ON DELETE CASCADE,
	tbl     TEXT NOT NULL,
	last_id INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (rule_id, tbl)
) STRICT, WITHOUT ROWID;
`

// migrate brings the database to the newest schema, in one IMMEDIATE
// transaction (the writer's DSN sets _txlock=immediate), so that two centers
// opening one file at once cannot both migrate. A new database gets schema
// in one step; an older one runs the migrations after its version. Opening
// an up-to-date database changes nothing.
func migrate(ctx context.Context, db *sql.DB) (from, to int, err error) {
	return migrateTo(ctx, db, len(migrations), true)
}

// migrateTo brings the database to version want (tests stop at earlier
// versions). fresh lets a new database take schema in one step, when want
// is the current version.
func migrateTo(ctx context.Context, db *sql.DB, want int, fresh bool) (from, to int, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, 0, fmt.Errorf("migrate: read user_version: %w", err)
	}
	if v > len(migrations) {
		return v, v, fmt.Errorf("migrate: database schema version %d is newer than this binary's %d: %w", v, len(migrations), ErrSchemaTooNew)
	}
	if v >= want {
		return v, v, nil
	}
	if v == 0 && fresh && want == len(migrations) {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return v, v, fmt.Errorf("migrate: create version %d: %w", want, err)
		}
	} else {
		for i := v; i < want; i++ {
			if _, err := tx.ExecContext(ctx, migrations[i].sql); err != nil {
				return v, i, fmt.Errorf("migrate: to version %d: %w", i+1, err)
			}
			if f := migrations[i].data; f != nil {
				if err := f(ctx, tx); err != nil {
					return v, i, fmt.Errorf("migrate: to version %d: %w", i+1, err)
				}
			}
		}
	}
	// PRAGMA takes no parameters; the value is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", want)); err != nil {
		return v, v, fmt.Errorf("migrate: set user_version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return v, v, fmt.Errorf("migrate: commit: %w", err)
	}
	return v, want, nil
}

// TableDDL returns the current schema's CREATE TABLE and CREATE INDEX
// statements for the named tables, in schema order: for a database that
// holds only some tables (the agent's in-memory rule window), without a copy
// of the DDL that could drift.
func TableDDL(tables ...string) string {
	want := map[string]bool{}
	for _, t := range tables {
		want[t] = true
	}
	var b strings.Builder
	// Comments go first: they may hold semicolons.
	for _, stmt := range strings.Split(stripSQLComments(schema), ";") {
		fields := strings.Fields(stmt)
		var name string
		switch {
		case len(fields) >= 3 && fields[0] == "CREATE" && fields[1] == "TABLE":
			name = fields[2]
		case len(fields) >= 3 && fields[0] == "CREATE" && (fields[1] == "INDEX" || fields[1] == "UNIQUE"):
			for i := range fields[:len(fields)-1] {
				if fields[i] == "ON" {
					name = fields[i+1]
					break
				}
			}
		}
		if want[strings.TrimSuffix(name, "(")] {
			b.WriteString(strings.TrimSpace(stmt))
			b.WriteString(";\n")
		}
	}
	return b.String()
}

func stripSQLComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}
