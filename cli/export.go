package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"

	"github.com/evilbitlabs/daemoneye/internal/apiclient"
	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// ExportCmd downloads the signed forensic package of a trace. The center
// records the export in its ledger before it answers, and the package
// proves that record; the file is checked against the CA before it is kept.
type ExportCmd struct {
	APIFlags
	Trace  string `required:"" help:"Trace id." placeholder:"ID"`
	Output string `short:"o" required:"" type:"path" help:"File to write the package to (refused if it exists, unless --force)." placeholder:"FILE"`
	Force  bool   `help:"Replace an existing output file."`
	Reason string `required:"" help:"Why (at least 10 characters; recorded with the export: the package holds the trace's command lines and environments as recorded)."`
}

// maxDownload bounds what the CLI accepts as a package.
const maxDownload = ledger.MaxPackageSize

// Run downloads, verifies and writes the package.
func (c *ExportCmd) Run(ctx context.Context, g *Globals) error {
	if !c.Force {
		if _, err := os.Stat(c.Output); err == nil {
			return fmt.Errorf("export: %s exists (--force replaces it)", c.Output)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("export: %w", err)
		}
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.close()
	fmt.Fprintf(g.stderr, "export: the center is building the package of trace %s...\n", c.Trace)
	pkg, err := cl.download(ctx, "/api/v1/traces/"+url.PathEscape(c.Trace)+"/export?"+url.Values{"reason": {c.Reason}}.Encode(), maxDownload, g.stderr)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	ca, err := pki.LoadCACert(c.CA)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	rep, err := ledger.VerifyPackage(pkg, ca)
	if err != nil {
		return fmt.Errorf("export: the center's package does not verify, not written: %w", err)
	}
	if rep.TraceID != c.Trace {
		return fmt.Errorf("export: asked for trace %s, the package is of %s", c.Trace, rep.TraceID)
	}
	if err := atomicfile.Write(c.Output, pkg, 0o640); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(g.stdout, "wrote %s (%d bytes): trace %s, %d events from %d hosts, signed by center %s; export recorded as ledger entry %d\n",
		c.Output, len(pkg), rep.TraceID, rep.Events, len(rep.Hosts), rep.Center, rep.Export.Index)
	fmt.Fprintf(g.stdout, "check it anywhere with: daemoneye verify %s --ca ca.crt\n", c.Output)
	return nil
}

// download GETs path and returns the body of a 2xx answer (at most limit
// bytes), reporting progress on stderr for a long one; an error answer
// becomes an error with the API's message.
func (c *apiClient) download(ctx context.Context, path string, limit int64, stderr io.Writer) ([]byte, error) {
	resp, err := c.Open(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	pr := newProgress(stderr, "export: downloaded", resp.ContentLength, true)
	return apiclient.ReadAll(pr.reader(resp.Body), limit, http.MethodGet, path)
}
