package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// OperatorCmd manages the center's operators in its data directory, with
// or without the center running. Changes are recorded in an audit outbox
// that the center's API moves into the ledger (at start, and every few
// seconds while it runs): the ledger itself is the running center's.
type OperatorCmd struct {
	DataDir string `type:"path" help:"Center data directory (sets center.data_dir)." placeholder:"DIR"`

	Add     OperatorAddCmd     `cmd:"" help:"Add an operator: a certificate name (daemoneye pki issue --role operator NAME) and optionally a local password."`
	List    OperatorListCmd    `cmd:"" help:"List operators, their roles and whether they are active."`
	Disable OperatorDisableCmd `cmd:"" help:"Disable an operator: their certificate and sessions stop working at once."`
}

// open opens the center's SQL store (creating and migrating it if this
// is a new center) and its operators.
func (c *OperatorCmd) open(g *Globals) (*center.Operators, func(), error) {
	if c.DataDir != "" {
		g.flag("center.data_dir", strconv.Quote(c.DataDir), "--data-dir")
	}
	l, err := g.load()
	if err != nil {
		return nil, nil, err
	}
	dir := l.Config.Center.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	s, err := sqlstore.Open(filepath.Join(dir, "center.db"), nil)
	if err != nil {
		return nil, nil, err
	}
	ops, err := center.OpenOperators(s.Path())
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return ops, func() { ops.Close(); s.Close() }, nil
}

// cliActor names who ran the command, for the audit entry.
func cliActor() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return "cli:" + u.Username
	}
	return "cli:uid-" + strconv.Itoa(os.Getuid())
}

// OperatorAddCmd adds an operator.
type OperatorAddCmd struct {
	Name          string `arg:"" help:"Operator id: the name in their certificate (letters, digits, . _ -)."`
	Role          string `required:"" enum:"viewer,analyst,approver,admin" help:"viewer, analyst, approver or admin (each includes the ones before)."`
	DisplayName   string `help:"Full name shown in the UI." placeholder:"TEXT"`
	PasswordStdin bool   `help:"Read a password for a local account from the first line of stdin (POST /api/v1/login); without it, certificate only."`
}

// Run adds the operator.
func (c *OperatorAddCmd) Run(ctx context.Context, g *Globals, p *OperatorCmd) error {
	role, err := center.ParseRole(c.Role)
	if err != nil {
		return err
	}
	var pw string
	if c.PasswordStdin {
		line, err := bufio.NewReader(g.stdin).ReadString('\n')
		if err != nil && line == "" {
			return errors.New("--password-stdin: no password on stdin")
		}
		pw = strings.TrimRight(line, "\r\n")
		if pw == "" {
			return errors.New("--password-stdin: empty password")
		}
	}
	ops, done, err := p.open(g)
	if err != nil {
		return err
	}
	defer done()
	op, err := ops.Add(ctx, center.NewOperator{ID: c.Name, Name: c.DisplayName, Role: role, Password: pw}, cliActor(), nil)
	if err != nil {
		return err
	}
	auth := "certificate (daemoneye pki issue --role operator " + op.ID + "; add --browser for the web UI)"
	if op.HasPassword {
		auth += " or password"
	}
	fmt.Fprintf(g.stdout, "added operator %s, role %s; signs in with a %s\n", op.ID, op.Role, auth)
	return nil
}

// OperatorListCmd lists operators.
type OperatorListCmd struct{}

// Run prints the operators.
func (c *OperatorListCmd) Run(ctx context.Context, g *Globals, p *OperatorCmd) error {
	ops, done, err := p.open(g)
	if err != nil {
		return err
	}
	defer done()
	list, err := ops.List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tSTATUS\tPASSWORD\tCREATED\tNAME")
	for _, o := range list {
		status := "active"
		if o.Disabled != nil {
			status = "disabled " + o.Disabled.Format(time.RFC3339)
		}
		pw := "no"
		if o.HasPassword {
			pw = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", o.ID, o.Role, status, pw, o.Created.Format(time.RFC3339), o.Name)
	}
	return tw.Flush()
}

// OperatorDisableCmd disables an operator.
type OperatorDisableCmd struct {
	Name string `arg:"" help:"Operator id."`
	Yes  bool   `help:"Do not ask for confirmation."`
}

// Run disables the operator.
func (c *OperatorDisableCmd) Run(ctx context.Context, g *Globals, p *OperatorCmd) error {
	ops, done, err := p.open(g)
	if err != nil {
		return err
	}
	defer done()
	op, found, err := ops.Get(ctx, c.Name)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("no operator %q (daemoneye operator list)", c.Name)
	}
	if !op.Active() {
		fmt.Fprintf(g.stdout, "operator %s is already disabled (since %s)\n", op.ID, op.Disabled.Format(time.RFC3339))
		return nil
	}
	if !c.Yes && !confirm(g, fmt.Sprintf("disable operator %s (%s)? Their certificate and sessions stop working at once [y/N] ", op.ID, op.Role)) {
		return errors.New("not disabled (answer y, or pass --yes)")
	}
	yes := true
	if _, err := ops.Update(ctx, op.ID, center.OperatorChange{Disabled: &yes}, cliActor(), nil); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "disabled operator %s\n", op.ID)
	return nil
}
