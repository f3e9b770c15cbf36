// Package sqlstore is the Security Center's SQL store: the queryable copy of
// everything the fleet reports, on SQLite (modernc.org/sqlite, pure Go) in WAL
// mode.
//
// Place in the data flow: the center's ingest verifies a sealed batch, dedups
// it by (agent_id, seq) and writes it durably to its Pebble batch store; then
// IngestBatch turns the batch into rows here, in one transaction: one row per
// event (process_events, network_events, file_events, exe_hashes,
// trace_notes, ...; trace events with their trace_id and trace_seq), the
// process table (processes) that answers lineage questions, cross-host links
// of traced connects (links.go), and the host's last_seen. TraceEvents and
// TraceBatches read a trace back across hosts, for `daemoneye trace show`,
// the UI and the forensic export. SQL rules, the
// hunt UI and ad-hoc analyst queries read from here, the last through the
// separately opened read-only connection pool (ReadOnly, Query).
//
// Every event row carries (host, batch_seq, idx): the batch it came in and
// its index in that batch. With the batch's Merkle root (kept in the batches
// table) that is what an inclusion proof needs (wire.Batch.EventProof), and
// BatchEvents rebuilds a stored batch's events from the rows exactly, so the
// rows themselves can be checked against the root the agent signed.
//
// Durability: the writer runs with synchronous=NORMAL. In WAL mode that means
// a commit is not fsynced; the WAL is synced at checkpoints. A power cut can
// lose the last transactions, never corrupt the file. That is the right
// trade here because every batch is already durable in the center's Pebble
// batch store before IngestBatch runs: the center re-ingests what HasBatch
// says is missing, and IngestBatch is idempotent (a batch is recorded in the
// batches table in the same transaction as its rows). For the same reason
// the ingest does not wait for checkpoints: a goroutine on its own
// connection copies the WAL back into the database file (checkpoint.go).
//
// Encodings, chosen for SQL users: times are INTEGER Unix nanoseconds; a
// process start is clock ticks since boot (capture.ProcKey.Start); uint64
// values are stored as their int64 bit pattern; IP addresses are TEXT in
// netip form (IPv4-mapped IPv6 stored unmapped, with a flag, so that
// dst_ip = '10.0.0.5' finds every connection to that host); argv is a JSON
// array (see EncodeArgv) next to cmdline, a display- and LIKE-safe rendering.
package sqlstore
