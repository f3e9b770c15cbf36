package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/ledger"
)

// LedgerCmd groups the audit ledger verbs.
type LedgerCmd struct {
	Verify LedgerVerifyCmd `cmd:"" help:"Check the whole audit ledger, and that it extends checkpoints seen before; names the first bad entry."`
}

// LedgerVerifyCmd checks a ledger directory offline.
type LedgerVerifyCmd struct {
	Dir        string   `type:"existingdir" default:"/var/lib/daemoneye/center/ledger" help:"Ledger directory." placeholder:"DIR"`
	Vkey       string   `required:"" type:"existingfile" help:"The center's checkpoint verifier key (the .vkey written beside its signing key)." placeholder:"FILE"`
	Checkpoint []string `type:"existingfile" help:"A signed checkpoint obtained before, e.g. from a forensic package (repeatable): the log must still extend it." placeholder:"FILE"`
}

// Run verifies and prints a summary, or the first failure (exit code 1).
func (c *LedgerVerifyCmd) Run(ctx context.Context, g *Globals) error {
	v, err := ledger.LoadVerifier(c.Vkey)
	if err != nil {
		return err
	}
	var seen [][]byte
	for _, p := range c.Checkpoint {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		seen = append(seen, b)
	}
	start := time.Now()
	pr := newProgress(g.stderr, "ledger verify: entries", 0, false)
	rep, err := ledger.Verify(ctx, c.Dir, v, ledger.VerifyOptions{Seen: seen, Progress: pr.set})
	if err != nil {
		var ve *ledger.VerifyError
		if errors.As(err, &ve) && ve.Seen > 0 {
			return fmt.Errorf("ledger %s FAILED: %w (--checkpoint %s)", c.Dir, err, c.Checkpoint[ve.Seen-1])
		}
		if errors.As(err, &ve) {
			return fmt.Errorf("ledger %s FAILED: %w", c.Dir, err)
		}
		return err
	}
	w := g.stdout
	fmt.Fprintf(w, "ledger %s OK (%s)\n", c.Dir, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(w, "  origin       %s\n", rep.Origin)
	fmt.Fprintf(w, "  entries      %d (%d with purged payloads)\n", rep.Entries, rep.Purged)
	fmt.Fprintf(w, "  tree size    %d\n", rep.Entries)
	fmt.Fprintf(w, "  root         %s\n", base64.StdEncoding.EncodeToString(rep.Root[:]))
	latest := "none"
	if rep.Latest.Size >= 0 {
		latest = fmt.Sprintf("latest at size %d", rep.Latest.Size)
	}
	fmt.Fprintf(w, "  checkpoints  %d stored verified (%s); %d seen, consistent\n", rep.Checkpoints, latest, rep.Seen)
	if len(rep.Kinds) > 0 {
		kinds := make([]string, 0, len(rep.Kinds))
		for k := range rep.Kinds {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %d", k, rep.Kinds[k]))
		}
		fmt.Fprintf(w, "  kinds        %s\n", strings.Join(parts, ", "))
	}
	for _, r := range rep.Recoveries {
		fmt.Fprintf(w, "  recovery     entry %d: a torn, unacknowledged tail of %d bytes was cut (%s)\n", r.Entry, r.Dropped, r.Reason)
	}
	if rep.Unacknowledged > 0 || rep.TornBytes > 0 {
		fmt.Fprintf(w, "  tail         %d whole entries and %d torn bytes past the commit point (a crash; the center's next start keeps the whole ones and cuts the rest)\n",
			rep.Unacknowledged, rep.TornBytes)
	}
	return nil
}
