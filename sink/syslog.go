package sink

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
)

// syslogDest writes RFC 5424 messages over TLS with RFC 5425 octet-counting
// framing ("LEN SP MSG"). TCP has no application acknowledgement: a batch
// written just before the connection broke may be lost (at-most-once for
// what the kernel had accepted), unlike the other sinks.
type syslogDest struct {
	addr string
	tls  *tls.Config
	conn *tls.Conn
	w    *bufio.Writer
}

// syslogSDID names our structured data. 32473 is the enterprise number
// RFC 5612 reserves for documentation; a customer's SIEM matches the name.
const syslogSDID = "daemoneye@32473"

func newSyslog(cfg config.Sink) (*syslogDest, error) {
	tc, err := clientTLS(cfg.TLS)
	if err != nil {
		return nil, err
	}
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("%w: syslog address %q: %w", ErrPermanent, cfg.Address, err)
		}
		tc.ServerName = host
	}
	return &syslogDest{addr: cfg.Address, tls: tc}, nil
}

func (d *syslogDest) send(ctx context.Context, recs []Record) ([]Record, error) {
	if d.conn == nil {
		dl := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: d.tls}
		c, err := dl.DialContext(ctx, "tcp", d.addr)
		if err != nil {
			return recs, err
		}
		d.conn, d.w = c.(*tls.Conn), bufio.NewWriterSize(c, 64<<10)
	}
	d.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	for _, r := range recs {
		msg := FormatRFC5424(r, time.Time{})
		d.w.WriteString(strconv.Itoa(len(msg)))
		d.w.WriteByte(' ')
		d.w.WriteString(msg)
	}
	if err := d.w.Flush(); err != nil {
		d.close()
		return recs, err
	}
	return nil, nil
}

func (d *syslogDest) close() error {
	if d.conn == nil {
		return nil
	}
	err := d.conn.Close()
	d.conn, d.w = nil, nil
	return err
}

// severity maps an alert's severity to a syslog severity; other records are
// informational (6).
func severity(s string) int {
	switch s {
	case "critical":
		return 2
	case "high":
		return 3
	case "medium":
		return 4
	case "low":
		return 5
	}
	return 6
}

// facilityLocal0 is the facility of every message (local use 0).
const facilityLocal0 = 16

// FormatRFC5424 renders r as one RFC 5424 message: HOSTNAME is the observed
// host, APP-NAME daemoneye, MSGID the record kind, structured data its id,
// kind and severity, and MSG the masked JSON document, UTF-8 with a BOM.
// A zero now uses the record's time as TIMESTAMP.
func FormatRFC5424(r Record, now time.Time) string {
	ts := r.time
	if !now.IsZero() {
		ts = now
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<%d>1 %s %s daemoneye - %s [%s id=\"%s\" kind=\"%s\"", facilityLocal0*8+severity(r.severity),
		ts.UTC().Format("2006-01-02T15:04:05.000000Z"), header(r.host, 255), header(r.kind, 32), syslogSDID,
		sdEscape(r.id), sdEscape(r.kind))
	if r.severity != "" {
		fmt.Fprintf(&b, " severity=\"%s\"", sdEscape(r.severity))
	}
	b.WriteString("] \ufeff")
	b.Write(r.doc)
	return b.String()
}

// header makes s a valid header field: printable US-ASCII without spaces,
// at most n characters, "-" when empty.
func header(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		c := s[i]
		if c < 33 || c > 126 {
			c = '_'
		}
		b.WriteByte(c)
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

// sdEscape escapes a PARAM-VALUE: '"', '\' and ']' take a backslash.
func sdEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `]`, `\]`)
	return r.Replace(strings.ToValidUTF8(s, "\ufffd"))
}
