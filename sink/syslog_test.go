package sink

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/evilbitlabs/daemoneye/config"
)

// rfc5424 is one parsed message.
type rfc5424 struct {
	pri                                   int
	ts, host, app, procID, msgID, sd, msg string
}

var (
	sdNameRE = regexp.MustCompile(`^[!-~]{1,32}$`) // printable, no space; '=', ']', '"' checked below
	tsRE     = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$`)
)

// parseRFC5424 parses a message strictly (RFC 5424 section 6 ABNF) and
// says what is wrong.
func parseRFC5424(m string) (rfc5424, error) {
	var out rfc5424
	if !strings.HasPrefix(m, "<") {
		return out, fmt.Errorf("no PRI")
	}
	end := strings.IndexByte(m, '>')
	if end < 2 || end > 4 {
		return out, fmt.Errorf("PRI of %d digits", end-1)
	}
	pri, err := strconv.Atoi(m[1:end])
	if err != nil || pri > 191 || (m[1] == '0' && end > 2) {
		return out, fmt.Errorf("PRI %q", m[1:end])
	}
	out.pri = pri
	rest := m[end+1:]
	if !strings.HasPrefix(rest, "1 ") {
		return out, fmt.Errorf("VERSION is not 1")
	}
	f := strings.SplitN(rest[2:], " ", 6)
	if len(f) != 6 {
		return out, fmt.Errorf("header has %d fields", len(f))
	}
	out.ts, out.host, out.app, out.procID, out.msgID = f[0], f[1], f[2], f[3], f[4]
	if !tsRE.MatchString(out.ts) {
		return out, fmt.Errorf("TIMESTAMP %q", out.ts)
	}
	if _, err := time.Parse(time.RFC3339Nano, out.ts); err != nil {
		return out, fmt.Errorf("TIMESTAMP %q: %v", out.ts, err)
	}
	for _, h := range []struct {
		name, v string
		max     int
	}{{"HOSTNAME", out.host, 255}, {"APP-NAME", out.app, 48}, {"PROCID", out.procID, 128}, {"MSGID", out.msgID, 32}} {
		if h.v == "" || len(h.v) > h.max {
			return out, fmt.Errorf("%s %q: want 1-%d characters", h.name, h.v, h.max)
		}
		for i := 0; i < len(h.v); i++ {
			if h.v[i] < 33 || h.v[i] > 126 {
				return out, fmt.Errorf("%s %q: not PRINTUSASCII", h.name, h.v)
			}
		}
	}
	// STRUCTURED-DATA: "-" or SD-ELEMENTs, then SP MSG or the end.
	s := f[5]
	if strings.HasPrefix(s, "-") {
		out.sd, s = "-", s[1:]
	} else {
		i := 0
		for i < len(s) && s[i] == '[' {
			j, err := sdElement(s[i:])
			if err != nil {
				return out, err
			}
			i += j
		}
		if i == 0 {
			return out, fmt.Errorf("STRUCTURED-DATA missing")
		}
		out.sd, s = s[:i], s[i:]
	}
	if s != "" {
		if s[0] != ' ' {
			return out, fmt.Errorf("no SP before MSG")
		}
		out.msg = s[1:]
		if strings.HasPrefix(out.msg, "\ufeff") && !utf8.ValidString(out.msg) {
			return out, fmt.Errorf("MSG with a BOM is not UTF-8")
		}
	}
	return out, nil
}

// sdElement parses "[SD-ID *(SP SD-PARAM)]" and returns its length.
func sdElement(s string) (int, error) {
	i := 1
	name := func() (string, error) {
		j := i
		for j < len(s) && s[j] != ' ' && s[j] != '=' && s[j] != ']' && s[j] != '"' {
			j++
		}
		n := s[i:j]
		if !sdNameRE.MatchString(n) {
			return "", fmt.Errorf("SD-NAME %q", n)
		}
		i = j
		return n, nil
	}
	if _, err := name(); err != nil {
		return 0, err
	}
	for i < len(s) && s[i] == ' ' {
		i++
		if _, err := name(); err != nil {
			return 0, err
		}
		if !strings.HasPrefix(s[i:], `="`) {
			return 0, fmt.Errorf("SD-PARAM without =\"")
		}
		i += 2
		for {
			if i >= len(s) {
				return 0, fmt.Errorf("unterminated PARAM-VALUE")
			}
			c := s[i]
			if c == '\\' && i+1 < len(s) && strings.IndexByte(`"\]`, s[i+1]) >= 0 {
				i += 2
				continue
			}
			if c == '"' {
				i++
				break
			}
			if c == ']' {
				return 0, fmt.Errorf("unescaped ] in PARAM-VALUE")
			}
			i++
		}
	}
	if i >= len(s) || s[i] != ']' {
		return 0, fmt.Errorf("SD-ELEMENT not closed")
	}
	return i + 1, nil
}

// tlsSyslogReceiver is an RFC 5425 receiver: TLS, octet-counted frames.
type tlsSyslogReceiver struct {
	ln   net.Listener
	mu   sync.Mutex
	msgs []string
	errs []error
}

func newTLSSyslogReceiver(t *testing.T, conf *tls.Config) *tlsSyslogReceiver {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	rc := &tlsSyslogReceiver{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { rc.serve(c) })
		}
	})
	return rc
}

func (rc *tlsSyslogReceiver) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		n, err := r.ReadString(' ')
		if err != nil {
			return
		}
		size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
		if err != nil || size <= 0 || size > 64<<10 || n[0] == '0' {
			rc.fail(fmt.Errorf("MSG-LEN %q", n))
			return
		}
		buf := make([]byte, size)
		if _, err := io.ReadFull(r, buf); err != nil {
			rc.fail(err)
			return
		}
		rc.mu.Lock()
		if _, err := parseRFC5424(string(buf)); err != nil {
			rc.errs = append(rc.errs, fmt.Errorf("%v in %q", err, buf))
		}
		rc.msgs = append(rc.msgs, string(buf))
		rc.mu.Unlock()
	}
}

func (rc *tlsSyslogReceiver) fail(err error) {
	rc.mu.Lock()
	rc.errs = append(rc.errs, err)
	rc.mu.Unlock()
}

func (rc *tlsSyslogReceiver) got() ([]string, []error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.msgs...), append([]error(nil), rc.errs...)
}

func TestFormatRFC5424(t *testing.T) {
	for _, r := range secretRecords() {
		m := FormatRFC5424(r, time.Time{})
		p, err := parseRFC5424(m)
		if err != nil {
			t.Fatalf("%s: %v\n%s", r.Kind(), err, m)
		}
		wantPri := 16*8 + 6
		if r.Kind() == KindAlert {
			wantPri = 16*8 + 3 // high
		}
		if p.pri != wantPri || p.host != "web-1" || p.app != "daemoneye" || p.msgID != r.Kind() ||
			!strings.HasPrefix(p.sd, `[daemoneye@32473 id="`+r.ID()+`"`) {
			t.Errorf("parsed %+v; want pri %d host web-1 msgid %s", p, wantPri, r.Kind())
		}
		if body := strings.TrimPrefix(p.msg, "\ufeff"); !json.Valid([]byte(body)) || body == p.msg {
			t.Errorf("MSG %q: want a BOM and the JSON document", p.msg)
		}
		checkNoSecret(t, "syslog message", []byte(m))
	}
	// Escaping in structured data and header sanitising.
	r := Record{kind: "alert", id: `a"b]c\d`, host: "bad host\n", time: time.Unix(0, 0), doc: []byte(`{}`)}
	if _, err := parseRFC5424(FormatRFC5424(r, time.Time{})); err != nil {
		t.Errorf("hostile id and host: %v", err)
	}
}

func TestSyslogTLS(t *testing.T) {
	cert, _, conf := selfSigned(t)
	rc := newTLSSyslogReceiver(t, conf)
	s := runSink(t, config.Sink{Name: "siem", Type: "syslog", Address: rc.ln.Addr().String(), TLS: config.SinkTLS{CA: cert}})
	for _, r := range secretRecords() {
		s.Offer(r)
	}
	waitFor(t, "3 messages received", func() bool { m, _ := rc.got(); return len(m) == 3 })
	msgs, errs := rc.got()
	if len(errs) > 0 {
		t.Fatalf("receiver: %v", errs)
	}
	for _, m := range msgs {
		checkNoSecret(t, "syslog message", []byte(m))
	}
	if st := s.Stats(); st.Sent != 3 {
		t.Errorf("stats = %+v, want 3 sent", st)
	}
}

// TestSyslogUntrustedServer: a receiver whose certificate the sink does
// not trust gets nothing; the records are retried, then given up.
func TestSyslogUntrustedServer(t *testing.T) {
	_, _, conf := selfSigned(t)
	other, _, _ := selfSigned(t)
	rc := newTLSSyslogReceiver(t, conf)
	s := runSink(t, config.Sink{Name: "siem", Type: "syslog", Address: rc.ln.Addr().String(), TLS: config.SinkTLS{CA: other}, MaxAttempts: 2})
	s.Offer(secretRecords()[0])
	waitFor(t, "the record to fail", func() bool { return s.Stats().Failed == 1 })
	if m, _ := rc.got(); len(m) != 0 {
		t.Errorf("untrusted receiver got %d messages", len(m))
	}
}

// TestQueueFullNeverBlocks: a sink whose receiver is down keeps its
// bounded queue and refuses the rest at once, counting them.
func TestQueueFullNeverBlocks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every dial is refused
	cert, _, _ := selfSigned(t)
	s := runSink(t, config.Sink{Name: "down", Type: "syslog", Address: addr, TLS: config.SinkTLS{CA: cert},
		QueueRecords: 4, BatchRecords: 1, MaxAttempts: 1000})
	r := secretRecords()[0]
	accepted := 0
	for range 1000 {
		if s.Offer(r) {
			accepted++
		}
	}
	st := s.Stats()
	if accepted > 5 || st.Dropped != uint64(1000-accepted) || st.Offered != 1000 {
		t.Errorf("accepted %d, stats %+v; want at most queue+1 accepted and the rest counted as dropped", accepted, st)
	}
}

// TestRsyslog sends to Debian's rsyslogd (imtcp with the gtls driver,
// RFC 5425) and reads what rsyslog parsed back from its output file.
func TestRsyslog(t *testing.T) {
	rsyslogd, err := exec.LookPath("rsyslogd")
	if err != nil {
		t.Skip("rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls); TestSyslogTLS covers the format")
	}
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so"); err != nil {
		t.Skip("rsyslog-gnutls not installed")
	}
	cert, key, _ := selfSigned(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	ln.Close()
	out := filepath.Join(dir, "out.json")
	conf := fmt.Sprintf(`global(workDirectory="%[1]s" DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="%[2]s" DefaultNetstreamDriverCertFile="%[2]s" DefaultNetstreamDriverKeyFile="%[3]s")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="%[4]s")
template(name="j" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}
action(type="omfile" file="%[5]s" template="j")
`, dir, cert, key, port, out)
	cfgPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, rsyslogd, "-n", "-f", cfgPath, "-i", filepath.Join(dir, "pid"))
	var logBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	waitFor(t, "rsyslogd to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	s := runSink(t, config.Sink{Name: "rsyslog", Type: "syslog", Address: addr, TLS: config.SinkTLS{CA: cert}})
	recs := secretRecords()
	for _, r := range recs {
		s.Offer(r)
	}
	var lines []string
	waitFor(t, "rsyslog to write 3 messages", func() bool {
		b, _ := os.ReadFile(out)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		return len(b) > 0 && len(lines) >= 3
	})
	for i, l := range lines {
		checkNoSecret(t, "rsyslog output", []byte(l))
		var m map[string]string
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("rsyslog line %q: %v (rsyslogd: %s)", l, err, logBuf.String())
		}
		r := recs[i]
		if m["version"] != "1" || m["hostname"] != "web-1" || m["app"] != "daemoneye" || m["msgid"] != r.Kind() ||
			!strings.HasPrefix(m["sd"], `[daemoneye@32473 id="`+r.ID()+`"`) {
			t.Errorf("rsyslog parsed %v; want RFC 5424 fields of %s", m, r.ID())
		}
		if msg := strings.TrimPrefix(m["msg"], "\ufeff"); !json.Valid([]byte(msg)) {
			t.Errorf("rsyslog msg %q is not the JSON document", m["msg"])
		}
	}
}
