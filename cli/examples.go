package cli

import (
	"fmt"
	"strings"

	"github.com/alecthomas/kong"
)

// examples are printed under each command's --help. Every command has
// some; TestEveryCommandHasExamples parses each one, so they stay valid.
// Lines starting with "#" explain the command that follows.
var examples = map[string][]string{
	"agent run": {
		"# Run the agent with the configuration in /etc/daemoneye/daemoneye.yaml",
		"daemoneye agent",
		"# Record locally only, with the /proc fallback",
		"daemoneye agent run --standalone --capture proc --data-dir /var/lib/daemoneye/agent",
	},
	"agent ps": {
		"# The process tree the agent sees, arguments masked",
		"daemoneye agent ps --tree",
		"# Arguments shown: needs a reason, recorded in the agent's audit file",
		`daemoneye agent ps --reveal --reason "IR-42: which cron job runs curl"`,
	},
	"agent lineage": {
		"# Ancestors and descendants of pid 4242",
		"daemoneye agent lineage 4242",
	},
	"agent status": {
		"# Capture source, lost events by cause, store size",
		"daemoneye agent status --data-dir /var/lib/daemoneye/agent",
	},
	"proxy": {
		"# A rack proxy under the regional one",
		"daemoneye proxy --listen 0.0.0.0:7443 --upstream px-region-1.local:7443 --wal-path /var/lib/daemoneye/proxy/wal",
	},
	"center": {
		"# The Security Center with its configuration file",
		"daemoneye -c /etc/daemoneye/center.yaml center",
		"daemoneye center --listen 0.0.0.0:7443 --data-dir /var/lib/daemoneye/center",
	},
	"config show": {
		"# Every key, its value and where it came from",
		"daemoneye -c /etc/daemoneye/agent.yaml config show agent",
		"daemoneye --set privacy.mode=secrets config show privacy",
	},
	"pki init": {
		"# The customer's root CA, offline, once",
		`daemoneye pki init --dir /etc/daemoneye/ca --org "Example Corp SOC"`,
	},
	"pki issue": {
		"# A center certificate for its name and address",
		"daemoneye pki issue --dir /etc/daemoneye/ca --role center --dns center.enclave --ip 10.0.0.2 center-1",
		"# An operator certificate for eight hours",
		"daemoneye pki issue --dir /etc/daemoneye/ca --role operator --ttl 8h alice",
		"# The API's certificate for browsers, and an operator's browser certificate (alice.p12)",
		"daemoneye pki issue --dir /etc/daemoneye/ca --role api --dns center.enclave center-api",
		"daemoneye pki issue --dir /etc/daemoneye/ca --role operator --browser alice",
	},
	"pki web-ca": {
		"# Add the ECDSA web CA (what browsers install) to a CA directory made before it existed",
		"daemoneye pki web-ca --dir /etc/daemoneye/ca",
	},
	"pki revoke": {
		"# Revoke a lost laptop's operator certificate (key compromise)",
		"daemoneye pki revoke --dir /etc/daemoneye/ca --cert alice.crt --reason 1",
		"daemoneye pki revoke --dir /etc/daemoneye/ca --serial 3f2a9c --yes",
	},
	"ledger verify": {
		"# Check the whole ledger and that it extends a checkpoint from a package",
		"daemoneye ledger verify --dir /var/lib/daemoneye/center/ledger --vkey /var/lib/daemoneye/center/ledger.vkey --checkpoint seen.checkpoint",
	},
	"operator add": {
		"# An analyst with a certificate only",
		`daemoneye operator add --role analyst --display-name "Alice Doe" alice`,
		"# An approver with a local password read from stdin",
		"printf '%s\\n' \"$PW\" | daemoneye operator add --role approver --password-stdin bob",
	},
	"operator list": {
		"daemoneye operator list --data-dir /var/lib/daemoneye/center",
	},
	"operator disable": {
		"# Certificate and sessions stop working at once",
		"daemoneye operator disable --yes alice",
	},
	"rules check": {
		"# Validate a pack and run its fixtures; with --trusted, its signature too",
		"daemoneye rules check site.yaml",
		"daemoneye rules check --trusted rules.pub site.yaml",
	},
	"rules sign": {
		"daemoneye rules sign --key rules.key site.yaml",
	},
	"rules keygen": {
		"# Writes rules.key (0600) and rules.pub",
		"daemoneye rules keygen --out rules.key",
	},
	"trace start": {
		"# Trace pid 4242 on web-1 for 30 minutes, signed with your operator key",
		`daemoneye trace start --api https://center:8443 --cert alice.crt --key alice.key --ca ca.crt --host web-1 --pid 4242 --duration 30m --reason "alert 17: apache spawned bash"`,
		"# The API flags may come from the environment (DAEMONEYE_API, DAEMONEYE_OPERATOR_CERT, ...)",
		`daemoneye trace start --host web-1 --pid 4242 --depth 4 --collect cmdlines,network --reason "alert 17: apache spawned bash"`,
	},
	"trace stop": {
		`daemoneye trace stop --reason "attacker left; enough recorded" 4f1c2b9e`,
		`daemoneye trace stop --yes --reason "attacker left; enough recorded" 4f1c2b9e`,
	},
	"trace list": {
		"daemoneye trace list --state active",
		"daemoneye trace list --host web-1 --limit 10",
	},
	"trace show": {
		"# Targets, the traced lineage as a tree, the timeline (arguments masked)",
		"daemoneye trace show 4f1c2b9e",
	},
	"export": {
		"# The signed forensic package of a trace, checked before it is written",
		"# It holds the trace's command lines as recorded: the reason goes in the ledger",
		`daemoneye export --trace 4f1c2b9e -o case-42.dpkg --reason "IR-42: evidence for legal"`,
	},
	"verify": {
		"# Anywhere, offline: what the package proves, against the customer CA",
		"daemoneye verify --ca ca.crt case-42.dpkg",
	},
	"bundle keygen": {
		"# Once, on the offline signing machine: bundle.key (0600) and bundle.pub for the nodes",
		"daemoneye bundle keygen --out bundle.key",
	},
	"bundle create": {
		"# A new binary and the customer's signed rule pack, for every role",
		"daemoneye bundle create --key bundle.key -o update-2026-11.bundle --binary bin/daemoneye --rules site.yaml",
		"# New rule packs only, for the center (it pushes them down to the agents)",
		"daemoneye bundle create --key bundle.key -o rules-42.bundle --target center --rules site.yaml=etc/daemoneye/rules/site.yaml",
		"# A configuration and a CRL, with an explicit sequence number",
		"daemoneye bundle create --key bundle.key -o cfg.bundle --sequence 43 --config-file agent.yaml=etc/daemoneye/daemoneye.yaml --crl crl.pem=var/lib/daemoneye/agent/crl.pem",
	},
	"bundle verify": {
		"# Offline, anywhere: what the bundle holds and that the key signed all of it",
		"daemoneye bundle verify --trusted bundle.pub update-2026-11.bundle",
	},
	"bundle apply": {
		"# On the node (asks before changing anything)",
		"daemoneye bundle apply --trusted /etc/daemoneye/bundle.pub update-2026-11.bundle",
		"# Unattended, on a center, also checking the packs' signatures",
		"daemoneye bundle apply --yes --role center --trusted bundle.pub --rules-key rules.pub rules-42.bundle",
		"# Into an image being built, not the running system",
		"daemoneye bundle apply --trusted bundle.pub --to /srv/images/agent-root --yes update-2026-11.bundle",
	},
	"demo": {
		"# The web-1 -> db-1 scenario end to end (root); make demo runs this",
		"daemoneye demo --dir .demo",
		"# Keep it running to explore the API and the UI",
		"daemoneye demo --dir .demo --keep",
		"daemoneye demo --dir .demo --clean",
	},
	"install": {
		"# What would change, and the unit, without changing anything",
		"daemoneye install --role agent --dry-run",
		"# As root: install the agent, then systemctl enable --now",
		"daemoneye install --role agent --enable",
		"# No questions (scripts); without --yes it asks on the terminal",
		"daemoneye install --role center --yes",
		"# Into an image being built: the user, files and enable links go in its root",
		"daemoneye install --role proxy --root /build/rootfs --yes --enable",
		"# Run a packaged binary instead of copying this one to /usr/local/bin",
		"daemoneye install --role proxy --binary /usr/bin/daemoneye",
	},
	"uninstall": {
		"daemoneye uninstall --role agent --dry-run",
		"# Stop, disable and remove the unit; the recorded data stays",
		"daemoneye uninstall --role agent",
		"# Also delete the data directories and the configuration file (asks first)",
		"daemoneye uninstall --role center --purge",
		"daemoneye uninstall --role proxy --root /build/rootfs --yes",
	},
	"bench scale": {
		"daemoneye bench scale --agents 100 --duration 2m",
		"# Issue 10's run: 1,000 agents through 2 proxy levels for 10 minutes, one host with 10,000 processes",
		"daemoneye bench scale --agents 1000 --top 2 --fanout 2 --rate 2 --batch-ms 10000 --duration 10m --big-host 10000",
		"# Keep the stores and logs, and the center's and proxies' CPU profiles",
		"daemoneye bench scale --agents 100 --duration 1m --keep --dir /var/tmp/scale --profile-dir /var/tmp/scale-prof",
	},
	"bench report": {
		"# What make bench does with its raw output",
		"daemoneye bench report --out bench-report.md .bench/bench-20261125T023041Z.txt",
	},
}

// commandPath is a command node's path without the program name and
// arguments: "trace start".
func commandPath(n *kong.Node) string {
	var parts []string
	for ; n != nil; n = n.Parent {
		if n.Type == kong.CommandNode {
			parts = append([]string{n.Name}, parts...)
		}
	}
	return strings.Join(parts, " ")
}

// helpWithExamples prints kong's help, then the command's examples.
func helpWithExamples(o kong.HelpOptions, ctx *kong.Context) error {
	if err := kong.DefaultHelpPrinter(o, ctx); err != nil {
		return err
	}
	n := ctx.Selected()
	if n == nil {
		return nil
	}
	ex := examples[commandPath(n)]
	if len(ex) == 0 {
		// A group (agent, pki ...): its default command's examples, if any.
		if n.DefaultCmd != nil {
			ex = examples[commandPath(n.DefaultCmd)]
		}
	}
	if len(ex) == 0 {
		return nil
	}
	fmt.Fprintln(ctx.Stdout, "\nExamples:")
	for _, l := range ex {
		fmt.Fprintln(ctx.Stdout, "  "+l)
	}
	return nil
}
