package capture

// Blind spots a Source may list from Blind(). They are shared by every
// Source so that operators, tests and the conformance suite speak of the same
// gaps: the suite skips a check, naming the blind spot, when the Source under
// test reports it.
const (
	// BlindShortLivedConnections: a connection opened and closed between two
	// polls is never seen.
	BlindShortLivedConnections = "short-lived-connections"
	// BlindExactConnectTime: a connection's event Time is when it was
	// noticed, not when the kernel established or closed it.
	BlindExactConnectTime = "exact-connect-time"
	// BlindExecArgvOfShortLived: a process that exits before its exec can be
	// read from /proc has an exec event without argv, exe, cwd or ids.
	BlindExecArgvOfShortLived = "exec-argv-of-short-lived"
	// BlindAcceptConnectAmbiguity: connect and accept are told apart by
	// inference (does the local port have a listener?), not by the syscall.
	BlindAcceptConnectAmbiguity = "accept-vs-connect-ambiguity"
	// BlindConnectionsOpenAtStart: connections already established when the
	// source started produce no connect, accept or close events.
	BlindConnectionsOpenAtStart = "connections-open-at-start"
	// BlindOtherNetNS: sockets in network namespaces other than the agent's.
	BlindOtherNetNS = "other-netns-sockets"
	// BlindUDP: UDP traffic is not reported.
	BlindUDP = "udp"

	// The names below are checked by the conformance suite; a Source lists
	// one when it cannot see that behaviour at all.
	BlindForkWithoutExec = "fork-without-exec" // KindFork events for children that never exec
	BlindParentChain     = "parent-chain"      // Parent keys on fork/exec events
	BlindPIDReuse        = "pid-reuse"         // two processes with one pid told apart by Start
	BlindArgv            = "argv"              // exact argv and comm bytes
	BlindExitSignal      = "exit-signal"       // Exit.Signal of a killed process
	BlindTCPConnect      = "tcp-connect"       // KindConnect with the connecting pid
	BlindTCPAccept       = "tcp-accept"        // KindAccept with the accepting pid
	BlindTCPClose        = "tcp-close"         // KindClose
	BlindIPv6            = "ipv6"              // IPv6 connections
)
