package bundle

// A node's bundle state, in its state directory (default
// /var/lib/daemoneye/bundles under the root):
//
//	applied.jsonl   one JSON line per bundle applied: rollback protection
//	pending.json    the journal of an apply in progress, written before the
//	                first file is staged: if the process dies, the next
//	                apply first puts every file back (or, past the commit
//	                point, finishes recording it)
//	backups/SEQ-DIGEST/PATH  the files each apply replaced
//	lock            held (flock) while an apply runs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/internal/dsse"
)

// State file names.
const (
	appliedLog  = "applied.jsonl"
	pendingFile = "pending.json"
	backupsDir  = "backups"
	lockFile    = "lock"
)

// Bounds of the state files: far above what years of updates write.
const (
	maxAppliedLog = 16 << 20
	maxPending    = 4 << 20
	keepBackups   = 5 // backup sets kept; older ones are pruned
)

// Errors of Apply callers branch on.
var (
	ErrRollback       = errors.New("bundle is older than one already applied")
	ErrAlreadyApplied = errors.New("bundle already applied")
	ErrRole           = errors.New("bundle is not for this role")
	ErrCheck          = errors.New("post-apply check failed")
	ErrDeclined       = errors.New("apply declined")
	ErrState          = errors.New("bundle state")
)

// Applied is one line of the applied-bundles log.
type Applied struct {
	Time     time.Time `json:"applied"`
	Digest   string    `json:"digest"`
	Sequence uint64    `json:"sequence"`
	Created  time.Time `json:"created"`
	Creator  string    `json:"creator,omitempty"`
	Key      string    `json:"key"`
	Files    []string  `json:"files"`
	Backup   string    `json:"backup,omitempty"` // relative to the state directory
	Forced   bool      `json:"forced,omitempty"`
}

// ReadApplied reads the applied-bundles log of a state directory (none
// yet: an empty list). A line that does not parse is an error: rollback
// protection must not be lost quietly.
func ReadApplied(stateDir string) ([]Applied, error) {
	b, err := atomicfile.ReadLimited(filepath.Join(stateDir, appliedLog), maxAppliedLog)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	return parseApplied(b, filepath.Join(stateDir, appliedLog))
}

func parseApplied(b []byte, name string) ([]Applied, error) {
	var out []Applied
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxManifestLine)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var a Applied
		if err := dsse.UnmarshalStrict(sc.Bytes(), &a); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v (repair or move the file; it is what refuses older bundles)", ErrState, name, line, err)
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrState, name, err)
	}
	return out, nil
}

// maxManifestLine bounds one line of the log (a bundle's file list).
const maxManifestLine = MaxFiles*(MaxPathBytes+8) + 4096

// appendApplied adds a line to the log and syncs it.
func appendApplied(stateDir string, a Applied) error {
	line, err := json.Marshal(a)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(stateDir, appliedLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// latest is the applied bundle with the highest sequence.
func latest(log []Applied) *Applied {
	var l *Applied
	for i := range log {
		if l == nil || log[i].Sequence > l.Sequence {
			l = &log[i]
		}
	}
	return l
}

// journal is pending.json: enough to put every file back after a crash.
type journal struct {
	Digest   string         `json:"digest"`
	Sequence uint64         `json:"sequence"`
	Entries  []journalEntry `json:"entries"`
	// Dirs were created by the apply, parents first.
	Dirs []string `json:"dirs,omitempty"`
	// Commit, once set, says every file is in place and checked: what is
	// left is recording it (see commit), never undoing it.
	Commit *Applied `json:"commit,omitempty"`
}

type journalEntry struct {
	Target  string `json:"target"`        // absolute
	Staged  string `json:"staged"`        // the new content before its swap
	Old     string `json:"old,omitempty"` // the old file's link beside the target, when it existed
	Existed bool   `json:"existed"`
	SHA256  string `json:"sha256"` // of the new content
}

func writeJournal(stateDir string, j *journal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir, pendingFile), b, 0o600)
}

func readJournal(stateDir string) (*journal, error) {
	b, err := atomicfile.ReadLimited(filepath.Join(stateDir, pendingFile), maxPending)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	return parseJournal(b)
}

func parseJournal(b []byte) (*journal, error) {
	var j journal
	if err := dsse.UnmarshalStrict(b, &j); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrState, pendingFile, err)
	}
	for i, e := range j.Entries {
		if e.Target == "" || e.Staged == "" {
			return nil, fmt.Errorf("%w: %s: entry %d has no target or staged path", ErrState, pendingFile, i)
		}
		if e.Existed != (e.Old != "") {
			return nil, fmt.Errorf("%w: %s: entry %d (%s): existed=%t but old path %q", ErrState, pendingFile, i, e.Target, e.Existed, e.Old)
		}
		for _, p := range []string{e.Target, e.Staged, e.Old} {
			if p != "" && !filepath.IsAbs(p) {
				return nil, fmt.Errorf("%w: %s: path %q is not absolute", ErrState, pendingFile, p)
			}
		}
	}
	for _, d := range j.Dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("%w: %s: path %q is not absolute", ErrState, pendingFile, d)
		}
	}
	if j.Commit != nil && len(j.Commit.Files) != len(j.Entries) {
		return nil, fmt.Errorf("%w: %s: %d files committed, %d in the journal", ErrState, pendingFile, len(j.Commit.Files), len(j.Entries))
	}
	if j.Commit != nil {
		for _, f := range j.Commit.Files {
			if err := CheckPath(f); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrState, pendingFile, err)
			}
		}
	}
	return &j, nil
}

func removeJournal(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, pendingFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(stateDir)
}

// pruneBackups keeps the newest keep backup sets (by name: SEQ-DIGEST with
// a zero-padded sequence sorts in order).
func pruneBackups(stateDir string, keep int) error {
	dir := filepath.Join(stateDir, backupsDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	var errs []error
	for len(names) > keep {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, names[0])))
		names = names[1:]
	}
	return errors.Join(errs...)
}
