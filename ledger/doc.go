// Package ledger is the center's append-only audit ledger: a Merkle log
// (RFC 6962 hashing, proofs from golang.org/x/mod/sumdb/tlog) whose tree heads
// the center signs as C2SP tlog-checkpoint notes (golang.org/x/mod/sumdb/note).
//
// Place in the data flow: the center appends one leaf for every operator action
// (login, trace start and stop, approval, reveal with its justification,
// export, configuration change, rule activation) and for every trace event it
// ingests. Signed checkpoints and inclusion proofs taken from here go into
// forensic packages, which a verifier checks offline holding only the center's
// note verifier key (see [VerifyInclusion], [VerifyConsistency],
// [OpenCheckpoint]). `daemoneye ledger verify` runs [Verify].
//
// There is no update or delete path. The only in-place change is
// [Ledger.PurgePayloads], which retention uses: it drops payload bytes while
// the tree stays, because a leaf commits to the payload's hash, not to the
// payload itself, and the purge is itself an entry of the log.
//
// # Leaves
//
// Each entry has a header, canonical CBOR (RFC 8949 core deterministic
// encoding) of the map
//
//	{1: index, 2: time (Unix ns, UTC), 3: kind, 4: actor,
//	 5: SHA-256(payload) (32 bytes), 6: len(payload)}
//
// The Merkle leaf is tlog.RecordHash(header) = SHA-256(0x00 || header). The
// header is the record data an offline verifier needs ([Record.Leaf]); the
// payload is checked against field 5. So the leaf is hash(header ||
// hash(payload)) in effect, and a purged payload leaves every proof valid.
// The index inside the header pins a leaf to its position: a record copied to
// another place does not verify.
//
// # Files
//
// A ledger is a directory, written by one process at a time (an flock on
// "lock"); readers, [Verify] included, need no lock.
//
//	entries      the magic line "daemoneye ledger v1\n", then records:
//	               u32 big-endian body length n, then n body bytes:
//	               u8 flags (0 live, 1 purged), u16 big-endian header length h,
//	               h header bytes, then the payload area (len(payload) bytes;
//	               zeros once purged, same length, so offsets never move).
//	hashes       the tlog stored hashes, 32 bytes each, at tlog.StoredHashIndex
//	               positions: proofs and tree heads are read, not recomputed.
//	index        u64 big-endian offset of each record in entries (derived data;
//	               rebuilt from entries when it disagrees).
//	checkpoints  every signed checkpoint ever made, each as u32 big-endian
//	               length then the signed note.
//	checkpoint   the latest signed checkpoint, replaced atomically (rename).
//	purge.pending  present only while a purge is being applied.
//
// # Durability and recovery
//
// A commit (one [Ledger.Append], or one [Ledger.AppendBatch], or every
// concurrent Append that queued while the previous commit was syncing) writes
// its records to entries and fsyncs, then writes hashes and index and fsyncs
// them. Append returns only after both. The hashes file is therefore the commit
// record: an entry it covers was on disk before its hashes were.
//
// [Open] reads only the tail: from the last entry both hashes and index agree
// on, to the end of entries. Complete, valid records past the hashes file (a
// crash between the two fsyncs) are kept and hashed. Past the hashes file the
// first invalid record, and everything after it, is a torn write that was
// never acknowledged, and is cut. Within what the hashes file commits, only a
// record that runs past the end of the file (a truncation) is cut, and the
// hashes file is cut to match. Either way Open logs it and appends a
// "ledger.recover" entry saying what was dropped, with the leaf hashes of any
// acknowledged entries lost. Any other bad record is never silently accepted:
// Open fails with [ErrTampered] and names the entry.
//
// Open does not re-read the whole log (it opens a million-entry ledger in
// under a millisecond); [Verify] does. Verify fails on a recover entry that
// lost acknowledged entries: whatever the cause, that is a deletion.
//
// # What verification can and cannot show
//
// [Verify] trusts nothing in the directory but needs the center's verifier
// key. It finds any change to a committed byte (entries, hashes, index), a
// payload dropped without a purge entry, a checkpoint not signed by the key,
// and any stored or seen checkpoint that the tree does not extend. Someone
// who can write the directory can still cut the log's tail together with the
// stored checkpoints past the cut; only a checkpoint kept elsewhere (a
// forensic package, an auditor, a witness; `ledger verify --checkpoint`)
// shows that. So checkpoints should leave the center.
//
// # Checkpoints
//
// The body is the C2SP tlog-checkpoint form: the origin line (the signer's key
// name, e.g. "daemoneye.center/acme"), the tree size in decimal, the root hash
// in base64, each ending in a newline; signed with an Ed25519 note key.
// tlog.FormatTree writes the same three lines but with the fixed origin
// "go.sum database tree", so the body is built here. A checkpoint is made every
// Options.CheckpointEvery entries (default 10000), every
// Options.CheckpointInterval (default 10s) while [Ledger.Run] runs and the tree
// grew, on [Ledger.Checkpoint], when Open finds the tree grew past the last
// one, and on [Ledger.Close]. A verifier opens a checkpoint once
// ([OpenCheckpoint]) and checks many leaves against it
// ([Checkpoint.CheckInclusion]).
//
// # Purge
//
// [Ledger.PurgePayloads] first appends a "ledger.purge" entry listing the
// indexes (so the purge is itself audited and [Verify] can tell a purge from a
// deletion), records it in purge.pending, sets each record's flag, zeroes its
// payload area (punching a hole where the file system can), then removes
// purge.pending. Open finishes a purge that a crash interrupted. Entries of the
// ledger's own kinds ("ledger.*") are never purged.
package ledger
