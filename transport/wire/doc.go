// Package wire is the byte format of DaemonEye links: length-prefixed CBOR
// frames (Hello, Batch, Ack, Command, CRL, ...) and the signed event batch.
//
// Place in the data flow: an agent seals its events into a batch
// (SealBatch: core-deterministic CBOR, zstd, COSE_Sign1 with the agent's
// Ed25519 key) and sends it in a BatchFrame on one of three lanes. Proxies
// read only the signed headers (PeekBatch) to key their WAL and forward the
// sealed bytes unchanged, so the agent's signature holds end to end. The
// center opens the batch (OpenBatch: signature first, then bounded
// decompression and decoding, then the Merkle root over the events) and
// dedups by (agent_id, seq) with a SeqWindow. Control frames (Command, CRL,
// RenewResponse, RulePacks) travel the same codec downward.
//
// Everything read from a link is untrusted: every decoder here enforces
// explicit Limits (frame size, nesting depth, array and map lengths,
// decompressed size), refuses duplicate map keys, indefinite lengths and
// tags, and reports failures as errors wrapping the sentinels below rather
// than panicking.
//
// Strings: every Go string is encoded as a CBOR byte string. Argv, paths and
// comm names are raw kernel bytes and may not be UTF-8; byte strings carry
// them unchanged and keep encoding infallible. Decoders accept byte strings
// into Go strings and still accept text strings, which must be valid UTF-8.
package wire
