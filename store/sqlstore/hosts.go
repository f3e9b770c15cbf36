package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Host kinds.
const (
	KindAgent = "agent"
	KindProxy = "proxy"
)

// Host is a fleet registry entry.
type Host struct {
	AgentID   string
	Kind      string // KindAgent or KindProxy
	Version   string
	Addresses []netip.Addr // the addresses the host reports owning
	SiteTag   string
	ProxyPath []string // node ids between the center and the host, nearest the center first

	FirstSeen time.Time
	LastSeen  time.Time // center clock
	LastEvent time.Time // agent clock of the newest event received; zero if none

	Health     json.RawMessage // the last health report, JSON object
	HealthTime time.Time
	LostEvents map[string]uint64 // counts of events lost at the source, by cause
}

func fromNano(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64)
}

// UpsertHost records what a host says about itself (at enrollment or on
// each hello): kind, version, addresses, site tag and proxy path replace
// what was stored; first_seen keeps the earliest, last_seen the latest.
// Zero FirstSeen / LastSeen mean now. Health is not touched (RecordHealth).
// A nil Addresses keeps the stored addresses (a caller that only knows the
// host is there, like the fleet's routing table, must not erase what the
// host reported; SetHostAddresses sets them alone); an empty non-nil one
// clears them.
func (s *Store) UpsertHost(ctx context.Context, h Host) error {
	if h.AgentID == "" {
		return errors.New("sqlstore: upsert host: empty agent id")
	}
	if h.Kind == "" {
		h.Kind = KindAgent
	}
	if h.Kind != KindAgent && h.Kind != KindProxy {
		return fmt.Errorf("sqlstore: upsert host %s: kind %q, want %q or %q", h.AgentID, h.Kind, KindAgent, KindProxy)
	}
	now := s.now()
	if h.FirstSeen.IsZero() {
		h.FirstSeen = now
	}
	if h.LastSeen.IsZero() {
		h.LastSeen = now
	}
	addrs := addrTexts(h.Addresses)
	addrJSON, err := json.Marshal(addrs)
	if err != nil {
		return fmt.Errorf("sqlstore: upsert host %s: %w", h.AgentID, err)
	}
	keepAddrs := h.Addresses == nil
	if h.ProxyPath == nil {
		h.ProxyPath = []string{}
	}
	pathJSON, err := json.Marshal(h.ProxyPath)
	if err != nil {
		return fmt.Errorf("sqlstore: upsert host %s: %w", h.AgentID, err)
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO hosts (agent_id, kind, version, addresses, site_tag, proxy_path, first_seen, last_seen)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
			ON CONFLICT (agent_id) DO UPDATE SET kind = excluded.kind, version = excluded.version,
				addresses = iif(?9, addresses, excluded.addresses), site_tag = excluded.site_tag, proxy_path = excluded.proxy_path,
				first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)`,
			h.AgentID, h.Kind, h.Version, string(addrJSON), h.SiteTag, string(pathJSON),
			h.FirstSeen.UnixNano(), h.LastSeen.UnixNano(), keepAddrs)
		if err != nil || keepAddrs {
			return err
		}
		return setAddresses(ctx, tx, h.AgentID, addrs)
	})
	if err != nil {
		return fmt.Errorf("sqlstore: upsert host %s: %w", h.AgentID, err)
	}
	return nil
}

// addrTexts is the stored spelling of addresses (the one network_events
// uses: IPv4-mapped unmapped, no zone), invalid ones dropped, each once.
func addrTexts(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	seen := map[string]bool{}
	for _, a := range as {
		if !a.IsValid() {
			continue
		}
		t := a.Unmap().WithZone("").String()
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// setAddresses replaces the host_addresses rows of agentID.
func setAddresses(ctx context.Context, tx *sql.Tx, agentID string, addrs []string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM host_addresses WHERE agent_id = ?`, agentID); err != nil {
		return err
	}
	for _, a := range addrs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO host_addresses (ip, agent_id) VALUES (?, ?)`, a, agentID); err != nil {
			return err
		}
	}
	return nil
}

// SetHostAddresses replaces the addresses an agent reports owning (its
// hello, or a change of its interfaces): the lookup table of cross-host
// stitching. ips are IP addresses in any netip spelling (IPv4-mapped and
// zoned forms are stored plain); one that does not parse is an error and
// nothing changes. An unknown host is added as an agent. The host's other
// fields are not touched.
func (s *Store) SetHostAddresses(ctx context.Context, agentID string, ips []string) error {
	if agentID == "" {
		return errors.New("sqlstore: set host addresses: empty agent id")
	}
	as := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		a, err := netip.ParseAddr(strings.TrimSpace(ip))
		if err != nil {
			return fmt.Errorf("sqlstore: set host addresses of %s: %w", agentID, err)
		}
		as = append(as, a)
	}
	addrs := addrTexts(as)
	addrJSON, err := json.Marshal(addrs)
	if err != nil {
		return fmt.Errorf("sqlstore: set host addresses of %s: %w", agentID, err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := s.now().UnixNano()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO hosts (agent_id, addresses, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
			ON CONFLICT (agent_id) DO UPDATE SET addresses = excluded.addresses`, agentID, string(addrJSON), now); err != nil {
			return err
		}
		return setAddresses(ctx, tx, agentID, addrs)
	})
	if err != nil {
		return fmt.Errorf("sqlstore: set host addresses of %s: %w", agentID, err)
	}
	return nil
}

// RecordHealth stores a host's health report (a JSON object) and its lost
// event counters, as of at (zero: now), and counts as hearing from it. A
// report older than the stored one is ignored. An unknown host is added as
// an agent.
func (s *Store) RecordHealth(ctx context.Context, agentID string, at time.Time, health json.RawMessage, lost map[string]uint64) error {
	if agentID == "" {
		return errors.New("sqlstore: record health: empty agent id")
	}
	if at.IsZero() {
		at = s.now()
	}
	if len(health) == 0 {
		health = json.RawMessage("{}")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(health, &obj); err != nil {
		return fmt.Errorf("sqlstore: record health %s: not a JSON object: %w", agentID, err)
	}
	if lost == nil {
		lost = map[string]uint64{}
	}
	lostJSON, err := json.Marshal(lost)
	if err != nil {
		return fmt.Errorf("sqlstore: record health %s: %w", agentID, err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := s.now().UnixNano()
	_, err = s.db.ExecContext(ctx, `INSERT INTO hosts (agent_id, first_seen, last_seen, health, health_time, lost_events)
		VALUES (?1, ?2, ?2, ?3, ?4, ?5)
		ON CONFLICT (agent_id) DO UPDATE SET
			last_seen = max(last_seen, excluded.last_seen),
			health = iif(coalesce(health_time, 0) <= excluded.health_time, excluded.health, health),
			lost_events = iif(coalesce(health_time, 0) <= excluded.health_time, excluded.lost_events, lost_events),
			health_time = max(coalesce(health_time, 0), excluded.health_time)`,
		agentID, now, string(health), at.UnixNano(), string(lostJSON))
	if err != nil {
		return fmt.Errorf("sqlstore: record health %s: %w", agentID, err)
	}
	return nil
}

const hostCols = `agent_id, kind, version, addresses, site_tag, proxy_path, first_seen, last_seen, last_event,
	health, health_time, lost_events`

// Hosts returns the fleet registry in agent id order.
func (s *Store) Hosts(ctx context.Context) ([]Host, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT `+hostCols+` FROM hosts ORDER BY agent_id`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: hosts: %w", err)
	}
	defer rows.Close()
	var out []Host
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: hosts: %w", err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: hosts: %w", err)
	}
	return out, nil
}

// HostsByAddr returns the agent ids of the enrolled hosts that report
// owning addr: the lookup behind cross-host stitching. More than one when
// sites reuse private address space; the caller narrows by site or path.
func (s *Store) HostsByAddr(ctx context.Context, addr netip.Addr) ([]string, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT agent_id FROM host_addresses WHERE ip = ? ORDER BY agent_id`,
		addr.Unmap().WithZone("").String())
	if err != nil {
		return nil, fmt.Errorf("sqlstore: hosts by address %s: %w", addr, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlstore: hosts by address %s: %w", addr, err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func scanHost(rows *sql.Rows) (Host, error) {
	var (
		h                        Host
		addrs, path, health, lst string
		first, last              int64
		lastEvent, healthTime    sql.NullInt64
	)
	if err := rows.Scan(&h.AgentID, &h.Kind, &h.Version, &addrs, &h.SiteTag, &path, &first, &last, &lastEvent,
		&health, &healthTime, &lst); err != nil {
		return Host{}, err
	}
	var as []string
	if err := json.Unmarshal([]byte(addrs), &as); err != nil {
		return Host{}, fmt.Errorf("host %s: addresses: %w", h.AgentID, err)
	}
	for _, a := range as {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return Host{}, fmt.Errorf("host %s: address %q: %w", h.AgentID, a, err)
		}
		h.Addresses = append(h.Addresses, ip)
	}
	if err := json.Unmarshal([]byte(path), &h.ProxyPath); err != nil {
		return Host{}, fmt.Errorf("host %s: proxy path: %w", h.AgentID, err)
	}
	if err := json.Unmarshal([]byte(lst), &h.LostEvents); err != nil {
		return Host{}, fmt.Errorf("host %s: lost events: %w", h.AgentID, err)
	}
	h.Health = json.RawMessage(health)
	h.FirstSeen, h.LastSeen = time.Unix(0, first), time.Unix(0, last)
	h.LastEvent, h.HealthTime = fromNano(lastEvent), fromNano(healthTime)
	return h, nil
}

// inTx runs f in a write transaction on the writer. The caller holds wmu.
func (s *Store) inTx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback() //nolint:errcheck // the error that matters is f's
		return err
	}
	return tx.Commit()
}

// HasBatch reports whether the batch (host, seq) has been ingested: after a
// crash the center re-ingests from its Pebble batch store what this says is
// missing (synchronous=NORMAL can lose the last commits, see the package doc).
func (s *Store) HasBatch(ctx context.Context, host string, seq uint64) (bool, error) {
	var one int
	err := s.ro.QueryRowContext(ctx, `SELECT 1 FROM batches WHERE host = ? AND seq = ?`, host, int64(seq)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("sqlstore: has batch %s/%d: %w", host, seq, err)
	}
	return true, nil
}
