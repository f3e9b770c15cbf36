package sqlstore

// Cross-host stitching. A traced TCP connect to an address that another
// enrolled host owns (host_addresses, kept by UpsertHost and
// SetHostAddresses) becomes a links row, to_host known, to_pid not yet.
// The accept on to_host with the same tuple, seen from the other side
// (its src is the connect's dst and the other way round), names the
// accepting process: to_pid, to_start, to_event. The two sides come from
// different agents, so either can be ingested first; IngestBatch matches
// in both orders. The center then fans the trace out to the accepting
// process (UnfollowedLinks, MarkFollowed).
//
// Limits, by design: the tuple must be the same on both sides, so a NAT
// between the hosts hides the link's accept; UDP and failed connects make
// no link (there is no accepting process to follow); an address owned by
// several hosts is narrowed to the connecting host's site, and if that
// still leaves more than one, no link is made rather than a guess.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// linkSkew is how far apart in time (two agents' clocks) a connect and an
// accept of the same tuple may be and still match. Wide enough for clock
// drift; the closest accept in time wins where a port was reused.
const linkSkew = int64(5 * time.Minute)

// Link is a links row.
type Link struct {
	ID       int64
	TraceID  string
	Time     time.Time // the connect, agent clock
	FromHost string
	From     capture.ProcKey
	ToHost   string
	To       capture.ProcKey // zero until the accept is known
	Proto    capture.Proto
	Src, Dst netip.AddrPort // as the connecting process saw them
	// FromEvent and ToEvent are the network_events ids of the connect and
	// the accept; ToEvent is 0 until the accept is known.
	FromEvent, ToEvent int64
	Followed           time.Time // zero until the trace was fanned out to To
}

const linkCols = `id, trace_id, time, from_host, from_pid, from_start, to_host, to_pid, to_start, proto,
	src_ip, src_port, dst_ip, dst_port, from_event, to_event, followed`

func scanLink(sc interface{ Scan(...any) error }) (Link, error) {
	var (
		l                                  Link
		t, fromPID, fromStart, proto       int64
		srcPort, dstPort                   int64
		toPID, toStart, fromEv, toEv, foll sql.NullInt64
		srcIP, dstIP                       string
	)
	if err := sc.Scan(&l.ID, &l.TraceID, &t, &l.FromHost, &fromPID, &fromStart, &l.ToHost, &toPID, &toStart, &proto,
		&srcIP, &srcPort, &dstIP, &dstPort, &fromEv, &toEv, &foll); err != nil {
		return l, err
	}
	src, err := netip.ParseAddr(srcIP)
	if err != nil {
		return l, fmt.Errorf("link %d: src %q: %w", l.ID, srcIP, err)
	}
	dst, err := netip.ParseAddr(dstIP)
	if err != nil {
		return l, fmt.Errorf("link %d: dst %q: %w", l.ID, dstIP, err)
	}
	l.Time = time.Unix(0, t)
	l.From = capture.ProcKey{PID: uint32(fromPID), Start: uint64(fromStart)}
	if toPID.Valid {
		l.To = capture.ProcKey{PID: uint32(toPID.Int64), Start: uint64(toStart.Int64)}
	}
	l.Proto = capture.Proto(proto)
	l.Src, l.Dst = netip.AddrPortFrom(src, uint16(srcPort)), netip.AddrPortFrom(dst, uint16(dstPort))
	l.FromEvent, l.ToEvent = fromEv.Int64, toEv.Int64
	l.Followed = fromNano(foll)
	return l, nil
}

func (s *Store) queryLinks(ctx context.Context, q string, args ...any) ([]Link, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT `+linkCols+` FROM links `+q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Link
	for rows.Next() {
		l, err := scanLink(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// Links returns the links of a trace in connect time order.
func (s *Store) Links(ctx context.Context, traceID string) ([]Link, error) {
	out, err := s.queryLinks(ctx, `WHERE trace_id = ? ORDER BY time, id`, traceID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: links of trace %s: %w", traceID, err)
	}
	return out, nil
}

// UnfollowedLinks returns the links the center can fan a trace out along
// and has not yet: the accepting process is known and Followed is zero.
// Oldest first.
func (s *Store) UnfollowedLinks(ctx context.Context) ([]Link, error) {
	out, err := s.queryLinks(ctx, `WHERE followed IS NULL AND to_pid IS NOT NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: unfollowed links: %w", err)
	}
	return out, nil
}

// MarkFollowed records that the trace was fanned out along link id at t
// (zero: now). A link already followed keeps its first time. ErrNoLink if
// there is no such link.
func (s *Store) MarkFollowed(ctx context.Context, linkID int64, t time.Time) error {
	if t.IsZero() {
		t = s.now()
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE links SET followed = ? WHERE id = ? AND followed IS NULL`, t.UnixNano(), linkID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var one int
		err = tx.QueryRowContext(ctx, `SELECT 1 FROM links WHERE id = ?`, linkID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNoLink
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlstore: mark link %d followed: %w", linkID, err)
	}
	return nil
}

// linkable reports whether ev may start a link: a traced TCP connect that
// the TCP state machine reported (or whose connect(2) returned 0), to a
// real address.
func linkable(ev *capture.Event) bool {
	c := ev.Conn
	return ev.TraceID != "" && c != nil && c.Proto == capture.ProtoTCP && (ev.Sock == nil || ev.Sock.Result == 0) &&
		c.Src.Addr().IsValid() && c.Dst.Addr().IsValid() && c.Dst.Port() != 0 && !c.Dst.Addr().IsLoopback()
}

// linkTx finds and closes links for one batch, inside its transaction,
// after its network_events rows are written.
type linkTx struct {
	ctx context.Context
	tx  *sql.Tx
	st  *ingestStmts
	b   *wire.Batch

	site    *string // the batch's host's site tag, read when first needed
	eventID *sql.Stmt
}

func (l *linkTx) stmt(st *sql.Stmt) *sql.Stmt { return l.tx.StmtContext(l.ctx, st) }

// rowID returns the network_events id of the batch's event idx.
func (l *linkTx) rowID(idx int) (int64, error) {
	if l.eventID == nil {
		l.eventID = l.stmt(l.st.eventID)
	}
	var id int64
	err := l.eventID.QueryRowContext(l.ctx, l.b.AgentID, int64(l.b.Seq), idx).Scan(&id)
	return id, err
}

// owner returns the one other enrolled host that owns addr, or "".
func (l *linkTx) owner(addr string) (string, error) {
	rows, err := l.stmt(l.st.addrOwners).QueryContext(l.ctx, addr)
	if err != nil {
		return "", err
	}
	type cand struct{ id, site string }
	var cands []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.id, &c.site); err != nil {
			rows.Close()
			return "", err
		}
		if c.id != l.b.AgentID {
			cands = append(cands, c)
		}
	}
	if err := rows.Close(); err != nil {
		return "", err
	}
	if len(cands) > 1 {
		if l.site == nil {
			var site string
			if err := l.stmt(l.st.hostSite).QueryRowContext(l.ctx, l.b.AgentID).Scan(&site); err != nil {
				return "", err
			}
			l.site = &site
		}
		same := cands[:0]
		for _, c := range cands {
			if c.site == *l.site {
				same = append(same, c)
			}
		}
		cands = same
	}
	if len(cands) != 1 {
		return "", nil
	}
	return cands[0].id, nil
}

// connects makes a link of each traced connect in idxs whose destination
// another host owns, and closes it at once if that host's accept is in.
func (l *linkTx) connects(idxs []int) error {
	for _, i := range idxs {
		ev := &l.b.Events[i]
		c := ev.Conn
		dstIP, _ := ipText(c.Dst.Addr())
		srcIP, _ := ipText(c.Src.Addr())
		to, err := l.owner(dstIP.(string))
		if err != nil {
			return fmt.Errorf("owner of %s: %w", c.Dst.Addr(), err)
		}
		if to == "" {
			continue
		}
		fromEvent, err := l.rowID(i)
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		var linkID int64
		err = l.stmt(l.st.insLink).QueryRowContext(l.ctx, ev.TraceID, ev.Time, l.b.AgentID, int64(ev.Proc.PID),
			int64(ev.Proc.Start), to, int64(c.Proto), srcIP, int64(c.Src.Port()), dstIP, int64(c.Dst.Port()),
			fromEvent).Scan(&linkID)
		if errors.Is(err, sql.ErrNoRows) {
			continue // the same connection's link is there already
		}
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		var accID, pid, start int64
		err = l.stmt(l.st.findAccept).QueryRowContext(l.ctx, srcIP, int64(c.Src.Port()), to, int64(c.Proto),
			dstIP, int64(c.Dst.Port()), ev.Time, linkSkew).Scan(&accID, &pid, &start)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return fmt.Errorf("event %d: accept: %w", i, err)
		}
		if _, err := l.stmt(l.st.matchLink).ExecContext(l.ctx, pid, start, accID, linkID); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
	}
	return nil
}

type linkKey struct {
	proto            int64
	srcIP, dstIP     string
	srcPort, dstPort int64
}

// accepts closes the open links towards this host that the accepts in
// idxs answer.
func (l *linkTx) accepts(idxs []int) error {
	if len(idxs) == 0 {
		return nil
	}
	lo, hi := l.b.Events[idxs[0]].Time, l.b.Events[idxs[0]].Time
	for _, i := range idxs {
		lo, hi = min(lo, l.b.Events[i].Time), max(hi, l.b.Events[i].Time)
	}
	rows, err := l.stmt(l.st.openLinks).QueryContext(l.ctx, l.b.AgentID, lo-linkSkew, hi+linkSkew)
	if err != nil {
		return err
	}
	open := map[linkKey][]Link{}
	for rows.Next() {
		k, err := scanLink(rows)
		if err != nil {
			rows.Close()
			return err
		}
		key := linkKey{int64(k.Proto), k.Src.Addr().String(), k.Dst.Addr().String(), int64(k.Src.Port()), int64(k.Dst.Port())}
		open[key] = append(open[key], k)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	if len(open) == 0 {
		return nil
	}
	for _, i := range idxs {
		ev := &l.b.Events[i]
		c := ev.Conn
		// The accepting side's dst is the connecting side's src.
		src, _ := ipText(c.Dst.Addr())
		dst, _ := ipText(c.Src.Addr())
		s, _ := src.(string)
		d, _ := dst.(string)
		key := linkKey{int64(c.Proto), s, d, int64(c.Dst.Port()), int64(c.Src.Port())}
		cands := open[key]
		best := -1
		for j, k := range cands {
			dt := abs64(k.Time.UnixNano() - ev.Time)
			if dt <= linkSkew && (best < 0 || dt < abs64(cands[best].Time.UnixNano()-ev.Time)) {
				best = j
			}
		}
		if best < 0 {
			continue
		}
		accID, err := l.rowID(i)
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if _, err := l.stmt(l.st.matchLink).ExecContext(l.ctx, int64(ev.Proc.PID), int64(ev.Proc.Start), accID, cands[best].ID); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		open[key] = append(cands[:best], cands[best+1:]...)
	}
	return nil
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
