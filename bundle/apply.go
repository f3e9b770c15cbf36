package bundle

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/internal/flock"
)

// DefaultStateDir is where a node keeps its bundle state, under the root.
const DefaultStateDir = "var/lib/daemoneye/bundles"

// ApplyOptions say where and how a bundle is applied.
type ApplyOptions struct {
	// Root is the directory the manifest's paths are relative to ("/").
	Root string
	// StateDir holds the applied-bundles log, the journal and backups
	// (default Root/var/lib/daemoneye/bundles).
	StateDir string
	// Trusted are the bundle-signing public keys.
	Trusted []ed25519.PublicKey
	// Role, when set, must be one of the bundle's targets.
	Role string
	// Force applies a bundle that is not newer than the last one applied
	// (or is the same one).
	Force bool
	// RulesTrusted, when set, are the rule pack keys: every rule pack the
	// bundle brings must then carry a signature that verifies.
	RulesTrusted []ed25519.PublicKey
	// CA, when set, must have signed every CRL the bundle brings.
	CA *x509.Certificate
	// Confirm is asked, after the bundle verified and before anything is
	// written, whether to go on; nil means yes.
	Confirm func(*Plan) bool
	// Progress is told how far each file has got.
	Progress Progress
	// Out receives one line per step (may be nil).
	Out io.Writer
	Now func() time.Time

	// fault, in tests, fails the apply at a named step.
	fault func(step string, i int) error
}

// Plan is what an apply is about to do.
type Plan struct {
	Opened   *Opened
	Root     string
	Files    []Planned
	Previous *Applied // the newest bundle applied before, if any
}

// Planned is one file of a plan.
type Planned struct {
	File
	Target string // absolute
	Exists bool   // replaces a file (else creates it)
}

// Result says what an apply did.
type Result struct {
	Opened *Opened
	Files  []Planned
	Checks []string // what each post-apply check found
	Backup string   // directory holding the files replaced
	// Recovered describes an interrupted earlier apply that was undone
	// first ("" if none).
	Recovered string
}

// Apply installs the bundle at path, all or nothing:
//
//  1. an interrupted earlier apply (a journal left behind) is undone, or
//     finished if it had passed its commit point;
//  2. the whole bundle is verified (signature, manifest, every hash);
//  3. rollback protection: a bundle not newer than the newest applied, or
//     applied already, is refused unless Force;
//  4. a journal is written, then every file is staged beside its target
//     (same directory, so the swap is a rename) and checked again against
//     the manifest as it is written; missing directories are created;
//  5. each target is swapped in: the old file keeps a hard link beside it,
//     the staged file is renamed over it;
//  6. each file's check runs where it now lives (the binary answers
//     --version, rule packs pass `rules check`, configuration validates,
//     CRLs parse);
//  7. the journal marks the commit; the replaced files move to the backups
//     and the bundle is recorded in the applied-bundles log.
//
// If any step from 4 to 7 fails before the commit, every file is put back
// as it was (the same inode, so mode, owner and times too), new files and
// directories are removed, and the error says what failed. What cannot be
// put back at once (a directory turned read-only) stays in the journal for
// the next apply.
func Apply(ctx context.Context, path string, o ApplyOptions) (*Result, error) {
	if o.Root == "" {
		o.Root = "/"
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("apply: root %s is not a directory", root)
	}
	state := o.StateDir
	if state == "" {
		state = filepath.Join(root, filepath.FromSlash(DefaultStateDir))
	}
	if state, err = filepath.Abs(state); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	say := func(format string, args ...any) {
		if o.Out != nil {
			fmt.Fprintf(o.Out, format+"\n", args...)
		}
	}
	// Its parents are ordinary directories (var/lib in an image being
	// built); the state itself is root's alone.
	if err := os.MkdirAll(filepath.Dir(state), 0o755); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	if err := os.Mkdir(state, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	lk, err := flock.TryLock(filepath.Join(state, lockFile))
	if errors.Is(err, flock.ErrHeld) {
		return nil, fmt.Errorf("%w: another bundle apply holds %s", ErrState, filepath.Join(state, lockFile))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	defer lk.Close()

	res := &Result{}
	if j, err := readJournal(state); err != nil {
		return nil, err
	} else if j != nil && j.Commit != nil {
		_, warn := commit(state, j)
		res.Recovered = fmt.Sprintf("an interrupted apply of bundle %s (sequence %d) had committed: it is recorded as applied", short(j.Digest), j.Sequence)
		say("%s", res.Recovered)
		for _, w := range warn {
			say("warning: %s", w)
		}
	} else if j != nil {
		if err := undo(j, len(j.Entries)); err != nil {
			return nil, fmt.Errorf("%w: an earlier apply (bundle %s) was interrupted and could not be undone: %v", ErrState, short(j.Digest), err)
		}
		if err := removeJournal(state); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrState, err)
		}
		res.Recovered = fmt.Sprintf("an interrupted apply of bundle %s (sequence %d) was undone: its %d file(s) are as they were before it",
			short(j.Digest), j.Sequence, len(j.Entries))
		say("%s", res.Recovered)
	}

	// 2. Verify everything before touching anything.
	say("verifying %s", path)
	op, err := VerifyFile(path, o.Trusted, o.Progress)
	if err != nil {
		return nil, err
	}
	res.Opened = op
	m := &op.Manifest
	if o.Role != "" && !slices.Contains(m.Targets, o.Role) {
		return nil, fmt.Errorf("%w: it is for %s, this node is a %s", ErrRole, strings.Join(m.Targets, ", "), o.Role)
	}

	// 3. Rollback protection.
	log, err := ReadApplied(state)
	if err != nil {
		return nil, err
	}
	prev := latest(log)
	for _, a := range log {
		if a.Digest == op.Digest && !o.Force {
			return nil, fmt.Errorf("%w: bundle %s (sequence %d) was applied on %s (--force to apply it again)",
				ErrAlreadyApplied, short(op.Digest), m.Sequence, a.Time.Format(time.RFC3339))
		}
	}
	if prev != nil && m.Sequence <= prev.Sequence && !o.Force {
		return nil, fmt.Errorf("%w: this bundle has sequence %d (created %s), bundle %s with sequence %d (created %s) was applied on %s: refusing to go back (--force to apply it anyway)",
			ErrRollback, m.Sequence, m.Created.Format(time.RFC3339), short(prev.Digest), prev.Sequence,
			prev.Created.Format(time.RFC3339), prev.Time.Format(time.RFC3339))
	}

	plan := &Plan{Opened: op, Root: root, Previous: prev}
	for _, f := range m.Files {
		target := filepath.Join(root, filepath.FromSlash(f.Path))
		if within(target, state) {
			return nil, fmt.Errorf("%w: %s is inside the bundle state directory %s", ErrUnsafe, f.Path, state)
		}
		exists, err := checkTarget(target)
		if err != nil {
			return nil, err
		}
		plan.Files = append(plan.Files, Planned{File: f, Target: target, Exists: exists})
	}
	res.Files = plan.Files
	if o.Confirm != nil && !o.Confirm(plan) {
		return nil, ErrDeclined
	}

	// 4. Stage, journalled from the first byte written: whatever happens
	// from here, the journal says what to remove or put back.
	j := newJournal(op, plan)
	if err := writeJournal(state, j); err != nil {
		return nil, fmt.Errorf("%w: journal: %v", ErrState, err)
	}
	rollback := func(cause error, swapped int) error {
		if uerr := undo(j, swapped); uerr != nil {
			return fmt.Errorf("%w; ROLLBACK INCOMPLETE (%v): the journal %s is kept and the next apply finishes the rollback first",
				cause, uerr, filepath.Join(state, pendingFile))
		}
		if err := removeJournal(state); err != nil {
			return fmt.Errorf("%w; rolled back, but the journal could not be removed: %v", cause, err)
		}
		say("rolled back: every file is as it was before")
		return fmt.Errorf("%w (rolled back: every file is as it was before)", cause)
	}
	if err := stage(path, o, plan, j); err != nil {
		return nil, rollback(err, 0)
	}
	say("staged %d file(s) beside their targets", len(j.Entries))

	// 5. Swap.
	for i, e := range j.Entries {
		if err := swap(e); err != nil {
			return nil, rollback(err, i+1)
		}
		if o.fault != nil {
			if err := o.fault("swap", i); err != nil {
				return nil, rollback(err, i+1)
			}
		}
	}
	if err := syncDirs(j); err != nil {
		return nil, rollback(err, len(j.Entries))
	}
	say("swapped in %d file(s)", len(j.Entries))

	// 6. Check what is now in place.
	ck := &checker{rulesTrusted: o.RulesTrusted, ca: o.CA}
	for i, p := range plan.Files {
		line, err := ck.check(ctx, p.File, p.Target)
		if err == nil && o.fault != nil {
			err = o.fault("check", i)
		}
		if err != nil {
			return nil, rollback(err, len(j.Entries))
		}
		if line != "" {
			res.Checks = append(res.Checks, line)
		}
	}
	say("checked the files where they now are: %d check(s) passed", len(res.Checks))

	// 7. Commit. From the moment the journal says so, the bundle is
	// applied: a crash after it finishes the commit, not an undo.
	entry := &Applied{Time: o.Now().UTC(), Digest: op.Digest, Sequence: m.Sequence, Created: m.Created, Creator: m.Creator,
		Key: KeyID(op.Signer), Forced: o.Force}
	for _, f := range m.Files {
		entry.Files = append(entry.Files, f.Path)
	}
	j.Commit = entry
	if err := writeJournal(state, j); err != nil {
		j.Commit = nil
		return nil, rollback(fmt.Errorf("%w: journal: %v", ErrState, err), len(j.Entries))
	}
	if o.fault != nil {
		if err := o.fault("commit", 0); err != nil {
			return nil, err // tests: the process dies right after the commit point
		}
	}
	var warn []string
	res.Backup, warn = commit(state, j)
	for _, w := range warn {
		say("warning: %s", w)
	}
	return res, nil
}

// commit finishes a committed apply (again, after a crash): the replaced
// files move to the backup set, the bundle is recorded in the applied log
// (once), the journal goes. It returns the backup directory ("" if
// nothing was replaced) and what could not be done.
func commit(state string, j *journal) (string, []string) {
	a := *j.Commit
	setName := fmt.Sprintf("%020d-%s", j.Sequence, short(j.Digest))
	backup := filepath.Join(state, backupsDir, setName)
	var warn []string
	kept := false
	for k, e := range j.Entries {
		if !e.Existed || !exists(e.Old) {
			continue
		}
		dst := filepath.Join(backup, filepath.FromSlash(a.Files[k]))
		if err := keepOld(e.Old, dst); err != nil {
			warn = append(warn, fmt.Sprintf("the old %s stays at %s: %v", a.Files[k], e.Old, err))
			continue
		}
		kept = true
	}
	if kept || exists(backup) {
		a.Backup = filepath.Join(backupsDir, setName)
	} else {
		backup = ""
	}
	log, err := ReadApplied(state)
	recorded := err == nil && slices.ContainsFunc(log, func(l Applied) bool { return l.Digest == a.Digest && l.Time.Equal(a.Time) })
	if !recorded {
		if err := appendApplied(state, a); err != nil {
			warn = append(warn, fmt.Sprintf("the files are applied but the applied-bundles log was not updated: %v", err))
		}
	}
	if err := removeJournal(state); err != nil {
		warn = append(warn, fmt.Sprintf("journal: %v", err))
	}
	if err := pruneBackups(state, keepBackups); err != nil {
		warn = append(warn, fmt.Sprintf("pruning old backups: %v", err))
	}
	return backup, warn
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// checkTarget refuses a target that is not a regular file (a symlink would
// be replaced by a file, a directory cannot be) and one whose parent is
// not a directory.
func checkTarget(target string) (bool, error) {
	fi, err := os.Lstat(target)
	switch {
	case err == nil && fi.Mode().IsRegular():
		return true, nil
	case err == nil:
		return false, fmt.Errorf("%w: %s exists and is not a regular file (%s): a bundle replaces regular files only", ErrUnsafe, target, fi.Mode().Type())
	case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
		return false, err
	}
	for d := filepath.Dir(target); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return false, fmt.Errorf("%w: %s is in %s, which is not a directory", ErrUnsafe, target, d)
			}
			return false, nil
		}
		if (!errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR)) || d == filepath.Dir(d) {
			return false, err
		}
	}
}

// newJournal plans where everything goes: the staged file and the old
// file's link beside each target, the directories to create.
func newJournal(op *Opened, plan *Plan) *journal {
	j := &journal{Digest: op.Digest, Sequence: op.Manifest.Sequence}
	for _, p := range plan.Files {
		e := journalEntry{Target: p.Target, Staged: sibling(p.Target, "new", op.Digest), Existed: p.Exists, SHA256: p.SHA256}
		if p.Exists {
			e.Old = sibling(p.Target, "old", op.Digest)
		}
		j.Entries = append(j.Entries, e)
		for _, d := range missingDirs(filepath.Dir(p.Target)) {
			if !slices.Contains(j.Dirs, d) {
				j.Dirs = append(j.Dirs, d)
			}
		}
	}
	return j
}

// stage writes each file to its staged name, checked against the manifest
// again as it is written (the bundle file could have changed since it was
// verified).
func stage(path string, o ApplyOptions, plan *Plan, j *journal) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br, err := NewReader(f, o.Trusted)
	if err != nil {
		return err
	}
	if br.Opened().Digest != plan.Opened.Digest {
		return fmt.Errorf("%w: the bundle file changed after it was verified", ErrDigest)
	}
	for _, d := range j.Dirs {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	for i := 0; ; i++ {
		_, content, err := br.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := plan.Files[i]
		if err := stageFile(p, j.Entries[i].Staged, o.Progress.reader("stage", p.File, content)); err != nil {
			return err
		}
		if o.fault != nil {
			if err := o.fault("stage", i); err != nil {
				return err
			}
		}
	}
}

// stageFile writes the content to a new file beside the target, with the
// manifest's mode and, as root, the owner it should have.
func stageFile(p Planned, name string, content io.Reader) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("stage %s: %w", p.Path, err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(name)
		return fmt.Errorf("stage %s: %w", p.Path, err)
	}
	if _, err := io.Copy(f, content); err != nil {
		return fail(err)
	}
	if err := f.Chmod(p.Perm()); err != nil {
		return fail(err)
	}
	if os.Geteuid() == 0 {
		// A replaced file keeps its owner and group; a new one belongs to
		// root and takes its directory's group (a service's configuration
		// directory is root:daemoneye, say).
		from, uid := p.Target, -1
		if !p.Exists {
			from, uid = filepath.Dir(p.Target), 0
		}
		if fi, err := os.Stat(from); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				if uid < 0 {
					uid = int(st.Uid)
				}
				if err := f.Chown(uid, int(st.Gid)); err != nil {
					return fail(err)
				}
			}
		}
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return fmt.Errorf("stage %s: %w", p.Path, err)
	}
	return nil
}

// sibling names a file beside target for this bundle: its staged new
// content ("new") or the old file's link ("old").
func sibling(target, what, digest string) string {
	return filepath.Join(filepath.Dir(target), fmt.Sprintf(".%s.bundle-%s-%s", filepath.Base(target), what, short(digest)))
}

// missingDirs lists dir and its ancestors that do not exist, parents first.
func missingDirs(dir string) []string {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append([]string{d}, missing...)
	}
	return missing
}

// swap puts one staged file in place: the old file first gets a hard link
// beside it (the same inode, so undo restores it exactly), then the staged
// file is renamed over the target.
func swap(e journalEntry) error {
	if e.Existed {
		if err := os.Link(e.Target, e.Old); err != nil {
			return fmt.Errorf("keep the old %s: %w", e.Target, err)
		}
	}
	if err := os.Rename(e.Staged, e.Target); err != nil {
		return fmt.Errorf("swap in %s: %w", e.Target, err)
	}
	return nil
}

// undo puts back the first n entries of a journal (in reverse), removes
// every staged file and the directories the apply created. It works from
// what is on disk, so it also finishes an apply interrupted at any point.
func undo(j *journal, n int) error {
	var errs []error
	for i := min(n, len(j.Entries)) - 1; i >= 0; i-- {
		e := j.Entries[i]
		switch {
		case e.Existed && exists(e.Old):
			// rename over the same inode (interrupted before the swap's
			// rename) does nothing: the link is removed below.
			if err := os.Rename(e.Old, e.Target); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", e.Target, err))
				continue
			}
			if err := os.Remove(e.Old); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		case !e.Existed:
			// Remove what the apply created, and only that.
			if sum, err := fileSHA256(e.Target); err == nil && sum == e.SHA256 {
				if err := os.Remove(e.Target); err != nil {
					errs = append(errs, fmt.Errorf("remove %s: %w", e.Target, err))
				}
			}
		}
	}
	if err := cleanStaged(j); err != nil {
		errs = append(errs, err)
	}
	for i := len(j.Dirs) - 1; i >= 0; i-- {
		os.Remove(j.Dirs[i]) // only if empty: something else may live there now
	}
	var synced []string
	for _, e := range j.Entries {
		if d := filepath.Dir(e.Target); !slices.Contains(synced, d) && exists(d) {
			synced = append(synced, d)
			if err := atomicfile.SyncDir(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cleanStaged removes staged files that were not swapped in.
func cleanStaged(j *journal) error {
	var errs []error
	for _, e := range j.Entries {
		if e.Staged != "" {
			if err := os.Remove(e.Staged); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove staged %s: %w", e.Staged, err))
			}
		}
	}
	return errors.Join(errs...)
}

func syncDirs(j *journal) error {
	var done []string
	for _, e := range j.Entries {
		d := filepath.Dir(e.Target)
		if slices.Contains(done, d) {
			continue
		}
		done = append(done, d)
		if err := atomicfile.SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// keepOld moves the old file's link into the backup set: a rename when the
// state directory is on the same file system, else a copy.
func keepOld(old, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if err := os.Rename(old, dst); err == nil {
		return nil
	}
	in, err := os.Open(old)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	err = atomicfile.WriteFrom(dst, fi.Mode().Perm(), func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
	if err != nil {
		return err
	}
	return os.Remove(old)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func fileSHA256(p string) (string, error) {
	_, sum, err := hashFile(p)
	return sum, err
}

// short is a digest's first 12 hex digits, for messages.
func short(d string) string { return d[:min(len(d), 12)] }
