package center

import (
	"context"
	"fmt"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/rules"
)

// loadPacks reads the configured rule packs, each checked against the
// customer's trusted keys (unsigned packs only where explicitly allowed).
func loadPacks(cfg config.Rules) ([]*rules.Pack, error) {
	var packs []*rules.Pack
	if cfg.Default {
		p, err := rules.Default()
		if err != nil {
			return nil, err
		}
		packs = append(packs, p)
	}
	trusted, err := rules.LoadPublicKeys(cfg.TrustedKeys...)
	if err != nil && len(cfg.TrustedKeys) > 0 {
		return nil, fmt.Errorf("rules: trusted keys: %w", err)
	}
	for _, path := range cfg.Packs {
		p, err := rules.Load(path, trusted, cfg.AllowUnsigned)
		if err != nil {
			return nil, fmt.Errorf("rules: %s: %w", path, err)
		}
		packs = append(packs, p)
	}
	return packs, nil
}

// startRules builds the rule engine over the SQL store's read-only pool.
// New alerts, and the traces their rules ask for, go to the ledger; the
// engine is poked after every ingested batch.
func (c *Center) startRules(ctx context.Context) (*rules.Engine, func(), error) {
	packs, err := loadPacks(c.cfg.Rules)
	if err != nil {
		return nil, nil, err
	}
	rec, err := rules.OpenRecorder(c.SQL.Path())
	if err != nil {
		return nil, nil, fmt.Errorf("rules: %w", err)
	}
	eng, err := rules.NewEngine(ctx, rules.EngineOptions{
		DB: c.SQL.ReadOnly(), Target: rules.Center, Recorder: rec, Log: c.log,
		OnAlert: c.onAlert,
	}, packs...)
	if err != nil {
		rec.Close()
		return nil, nil, fmt.Errorf("rules: %w", err)
	}
	for _, p := range packs {
		c.log.Info("rule pack active", "pack", p.Name, "version", p.Version, "rules", len(p.Rules))
		if _, err := c.Ledger.Append(ledger.Entry{Kind: ledger.KindRuleActivate, Actor: "center", Time: time.Now(),
			Payload: []byte(fmt.Sprintf(`{"pack":%q,"version":%q,"rules":%d}`, p.Name, p.Version, len(p.Rules)))}); err != nil {
			rec.Close()
			return nil, nil, fmt.Errorf("rules: ledger: %w", err)
		}
	}
	return eng, func() { rec.Close() }, nil
}

func (c *Center) onAlert(a rules.Alert) {
	c.log.Warn("alert", "rule", a.RuleID, "severity", a.Severity, "technique", a.Technique,
		"host", a.Process.Host, "pid", a.Process.PID, "start", a.Process.Start, "alert_id", a.ID)
	payload := fmt.Sprintf(`{"alert_id":%d,"rule":%q,"host":%q,"pid":%d,"start":%d}`, a.ID, a.RuleID, a.Process.Host, a.Process.PID, a.Process.Start)
	if _, err := c.Ledger.Append(ledger.Entry{Kind: "alert", Actor: "rule:" + a.RuleID, Time: time.Now(), Payload: []byte(payload)}); err != nil {
		c.log.Error("ledger alert", "err", err)
	}
	if a.Trace != nil {
		// Starting it is the focused-trace stage's policy (at once, or
		// after approval); until then the request is recorded.
		if _, err := c.Ledger.Append(ledger.Entry{Kind: "rule.trace_request", Actor: "rule:" + a.RuleID, Time: time.Now(), Payload: []byte(payload)}); err != nil {
			c.log.Error("ledger trace request", "err", err)
		}
	}
}
