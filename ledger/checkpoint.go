package ledger

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is a parsed C2SP tlog-checkpoint: a signed tree head.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	Note   []byte // the signed note it came from
}

// formatCheckpoint writes the checkpoint body: origin, size, base64 root.
func formatCheckpoint(origin string, size int64, root tlog.Hash) string {
	return fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(root[:]))
}

// parseCheckpointBody parses the note text. Extension lines after the
// third are allowed by C2SP and ignored.
func parseCheckpointBody(text string) (Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return Checkpoint{}, errors.New("checkpoint body has fewer than three lines")
	}
	origin, sizeLine, rootLine := lines[0], lines[1], lines[2]
	if origin == "" {
		return Checkpoint{}, errors.New("checkpoint has an empty origin")
	}
	size, err := strconv.ParseInt(sizeLine, 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != sizeLine {
		return Checkpoint{}, fmt.Errorf("checkpoint tree size %q is malformed", sizeLine)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(rootLine)
	if err != nil || len(raw) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("checkpoint root hash %q is malformed", rootLine)
	}
	cp := Checkpoint{Origin: origin, Size: size}
	copy(cp.Root[:], raw)
	return cp, nil
}

// OpenCheckpoint verifies a signed checkpoint with the center's note verifier
// and parses it. The origin line must be the verifier's key name: a
// checkpoint of another log, or one signed by another key, is refused.
func OpenCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	cp, err := openCheckpoint(signed, v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: %v: %w", err, ErrTampered)
	}
	return cp, nil
}

// openCheckpoint is OpenCheckpoint with a bare reason for an error.
func openCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		var unknown *note.UnknownVerifierError
		var invalid *note.InvalidSignatureError
		var unverified *note.UnverifiedNoteError
		switch {
		case errors.As(err, &invalid):
			return Checkpoint{}, fmt.Errorf("checkpoint signature by %s is not valid", v.Name())
		case errors.As(err, &unknown), errors.As(err, &unverified):
			return Checkpoint{}, fmt.Errorf("checkpoint is not signed by %s", v.Name())
		}
		return Checkpoint{}, fmt.Errorf("checkpoint is not a signed note: %v", err)
	}
	cp, err := parseCheckpointBody(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("checkpoint origin %q is not the verifier's %q", cp.Origin, v.Name())
	}
	cp.Note = signed
	return cp, nil
}

// parseUnverified reads a checkpoint the ledger wrote itself, without a
// verifier (Open holds only the signer). Verify checks signatures.
func parseUnverified(signed []byte) (Checkpoint, error) {
	text, _, ok := strings.Cut(string(signed), "\n\n")
	if !ok {
		return Checkpoint{}, errors.New("checkpoint is not a signed note")
	}
	cp, err := parseCheckpointBody(text + "\n")
	if err != nil {
		return Checkpoint{}, err
	}
	cp.Note = signed
	return cp, nil
}

// VerifyInclusion checks, offline, that leaf (a Record.Leaf) is the entry at
// its index in the tree the signed checkpoint describes. It needs only the
// center's note verifier; it returns the decoded leaf and checkpoint. Check the
// payload, if held, with CheckPayload. To check many leaves against one
// checkpoint, open it once with OpenCheckpoint and use CheckInclusion.
func VerifyInclusion(v note.Verifier, checkpoint, leaf []byte, proof tlog.RecordProof) (Record, Checkpoint, error) {
	cp, err := OpenCheckpoint(checkpoint, v)
	if err != nil {
		return Record{}, Checkpoint{}, err
	}
	rec, err := cp.CheckInclusion(leaf, proof)
	return rec, cp, err
}

// CheckInclusion checks that leaf is the entry at its index in the tree of
// cp, which must come from OpenCheckpoint.
func (cp Checkpoint) CheckInclusion(leaf []byte, proof tlog.RecordProof) (Record, error) {
	rec, err := DecodeLeaf(leaf)
	if err != nil {
		return Record{}, err
	}
	if rec.Index >= cp.Size {
		return rec, fmt.Errorf("ledger: entry %d is beyond the checkpoint's tree size %d: %w", rec.Index, cp.Size, ErrTampered)
	}
	if err := tlog.CheckRecord(proof, cp.Size, cp.Root, rec.Index, tlog.RecordHash(leaf)); err != nil {
		return rec, fmt.Errorf("ledger: entry %d is not in the tree of size %d: %v: %w", rec.Index, cp.Size, err, ErrTampered)
	}
	return rec, nil
}

// VerifyConsistency checks, offline, that the tree of the newer checkpoint
// extends the tree of the older one (the log only grew).
func VerifyConsistency(v note.Verifier, older, newer []byte, proof tlog.TreeProof) error {
	o, err := OpenCheckpoint(older, v)
	if err != nil {
		return err
	}
	n, err := OpenCheckpoint(newer, v)
	if err != nil {
		return err
	}
	return o.CheckConsistency(n, proof)
}

// CheckConsistency checks that the tree of newer extends the tree of cp;
// both must come from OpenCheckpoint.
func (cp Checkpoint) CheckConsistency(newer Checkpoint, proof tlog.TreeProof) error {
	return checkConsistency(cp, newer, proof)
}

func checkConsistency(o, n Checkpoint, proof tlog.TreeProof) error {
	if o.Size > n.Size {
		return fmt.Errorf("ledger: checkpoint at size %d is newer than the one at size %d: %w", o.Size, n.Size, ErrTampered)
	}
	if o.Size == 0 {
		// Every tree extends the empty one; tlog's proofs start at size 1.
		if empty, _ := tlog.TreeHash(0, nil); o.Root != empty || len(proof) != 0 {
			return fmt.Errorf("ledger: checkpoint at size 0 has a root that is not the empty tree's: %w", ErrTampered)
		}
		return nil
	}
	if err := tlog.CheckTree(proof, n.Size, n.Root, o.Size, o.Root); err != nil {
		return fmt.Errorf("ledger: checkpoint at size %d is not consistent with the one at size %d: %v: %w", o.Size, n.Size, err, ErrTampered)
	}
	return nil
}
