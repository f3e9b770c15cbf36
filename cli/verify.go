package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// VerifyCmd checks a forensic package offline with the customer CA
// certificate alone, and prints what it proved.
type VerifyCmd struct {
	Package string `arg:"" type:"existingfile" help:"The package (daemoneye export -o FILE)." placeholder:"FILE"`
	CA      string `name:"ca" required:"" env:"DAEMONEYE_CA" type:"existingfile" help:"Customer CA certificate (ca.crt): the only thing trusted." placeholder:"FILE"`
}

// Run verifies; a failure names the first thing that failed (exit code 1).
func (c *VerifyCmd) Run(ctx context.Context, g *Globals) error {
	ca, err := pki.LoadCACert(c.CA)
	if err != nil {
		return err
	}
	f, err := os.Open(c.Package)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(f, ledger.MaxPackageSize+1))
	f.Close()
	if err != nil {
		return err
	}
	rep, err := ledger.VerifyPackage(b, ca)
	if err != nil {
		return fmt.Errorf("package %s FAILED: %w", c.Package, err)
	}
	printPackageReport(g.stdout, c.Package, ca.Subject.CommonName, rep)
	return nil
}

func printPackageReport(w io.Writer, name, caName string, rep ledger.PackageReport) {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	fmt.Fprintf(w, "package %s VERIFIED against CA %q\n", name, caName)
	var meta struct {
		State       string `json:"state"`
		InitiatedBy string `json:"initiated_by"`
		Reason      string `json:"reason"`
		Host        string `json:"host"`
		PID         uint32 `json:"pid"`
		// What retention removed (roles/center/export.go).
		Retention struct {
			Purged []struct {
				Host     string `json:"host"`
				Events   int    `json:"events"`
				TraceSeq string `json:"trace_seq"`
				Pending  bool   `json:"pending"`
			} `json:"purged"`
			Purges []struct {
				Entry  int64     `json:"entry"`
				Site   string    `json:"site"`
				Window string    `json:"window"`
				Cutoff time.Time `json:"cutoff"`
			} `json:"purges"`
		} `json:"retention"`
	}
	json.Unmarshal(rep.Metadata, &meta)
	fmt.Fprintf(w, "  trace        %s: root %s pid %d, initiated by %s, state %s", rep.TraceID, meta.Host, meta.PID, meta.InitiatedBy, meta.State)
	if meta.Reason != "" {
		fmt.Fprintf(w, ", reason %q", meta.Reason)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  signed by    center %s (certificate %s, valid at export), exported %s\n", rep.Center, rep.CenterCert, ts(rep.ExportedAt))
	fmt.Fprintf(w, "  events       %d proven: each by a Merkle proof in a batch signed by its agent's certificate, in trace_seq order per host; %d also recorded in the ledger on arrival\n",
		rep.Events, rep.EventsInLedger)
	for k, h := range rep.Hosts {
		label := "hosts"
		if k > 0 {
			label = ""
		}
		fmt.Fprintf(w, "  %-12s %s: %d events (trace_seq %d-%d) in %d batches, agent certificate %s", label, h.Host, h.Events,
			h.FirstTraceSeq, h.LastTraceSeq, h.Batches, strings.Join(h.Agents, ", "))
		if len(h.Missing) > 0 {
			var rs []string
			for _, r := range h.Missing {
				rs = append(rs, r.String())
			}
			why := "the center declares it never received them"
			if len(meta.Retention.Purged) > 0 {
				why += ", or retention removed them: see purged"
			}
			fmt.Fprintf(w, "; NOT PROVEN: trace_seq %s (%s)", strings.Join(rs, ", "), why)
		}
		fmt.Fprintln(w)
	}
	for k, p := range meta.Retention.Purged {
		label := "purged"
		if k > 0 {
			label = ""
		}
		fmt.Fprintf(w, "  %-12s %s: %d events (trace_seq %s) removed by retention after their window, as the center states in trace.json", label, p.Host, p.Events, p.TraceSeq)
		if p.Pending {
			fmt.Fprint(w, " (a removal in progress)")
		}
		fmt.Fprintln(w)
	}
	for _, p := range meta.Retention.Purges {
		fmt.Fprintf(w, "  %-12s ledger entry #%d: site %q, window %s, cutoff %s\n", "", p.Entry, p.Site, p.Window, ts(p.Cutoff))
	}
	for k, a := range rep.Artifacts {
		label := "artifacts"
		if k > 0 {
			label = ""
		}
		switch {
		case a.SHA256 != "" || a.Blake3 != "":
			fmt.Fprintf(w, "  %-12s %s trace_seq %d: %s", label, a.Host, a.TraceSeq, a.Path)
			if a.SHA256 != "" {
				fmt.Fprintf(w, " sha256 %s", a.SHA256)
			}
			if a.Blake3 != "" {
				fmt.Fprintf(w, " blake3 %s", a.Blake3)
			}
			fmt.Fprintln(w)
		case a.MemBytes > 0:
			fmt.Fprintf(w, "  %-12s %s trace_seq %d: memory snippet at %#x, %d bytes\n", label, a.Host, a.TraceSeq, a.MemAddr, a.MemBytes)
		default:
			fmt.Fprintf(w, "  %-12s %s trace_seq %d: %s (no digest)\n", label, a.Host, a.TraceSeq, a.Kind)
		}
	}
	if c := rep.Command; c != nil {
		fmt.Fprintf(w, "  command      signed by %s %s at %s for %s pid %d", c.SignerRole, c.Signer, ts(c.Signed), c.TargetAgent, c.TargetPID)
		if c.Center != "" {
			fmt.Fprintf(w, "; stamped by center %s (policy %s", c.Center, c.Policy)
			if c.ApprovedBy != "" {
				fmt.Fprintf(w, ", approved by %s", c.ApprovedBy)
			}
			fmt.Fprint(w, ")")
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "  command      none in the package")
	}
	cp := rep.Checkpoint
	fmt.Fprintf(w, "  ledger       checkpoint %s, tree size %d, root %s (signed by the center's ledger key, which its certificate vouches for)\n",
		cp.Origin, cp.Size, base64.StdEncoding.EncodeToString(cp.Root[:]))
	kinds := map[string]int{}
	for _, a := range rep.Actions {
		kinds[a.Kind]++
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(ks)
	fmt.Fprintf(w, "  proven       %d ledger entries in that tree: %s\n", len(rep.Actions), strings.Join(ks, ", "))
	for _, a := range rep.Actions {
		if a.Kind == ledger.KindTraceEvent {
			continue
		}
		what := "payload purged by retention"
		if a.Payload != nil {
			what = string(a.Payload)
			if len(what) > 160 {
				what = what[:160] + "..."
			}
		}
		fmt.Fprintf(w, "  %-12s #%d %s %s by %s: %s\n", "", a.Index, ts(a.Time), a.Kind, a.Actor, what)
	}
	fmt.Fprintf(w, "  exported by  %s at %s (ledger entry %d)", rep.Export.Actor, ts(rep.Export.Time), rep.Export.Index)
	var why struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(rep.Export.Payload, &why) == nil && why.Reason != "" {
		fmt.Fprintf(w, ", reason %s", privacy.Safe(why.Reason))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "  not checked  revocation (no CRL is read); that the center exported every batch it held beyond what its ledger entries name")
}
