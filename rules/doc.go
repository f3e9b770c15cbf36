// Package rules is DaemonEye's detection layer: SQL rule packs, parsed,
// validated, signed and evaluated incrementally, on the center over its SQL
// store (store/sqlstore) and on agents over a small in-memory window of
// their own events.
//
// Place in the data flow: the center ingests a batch into SQLite, pokes the
// Engine, and each active rule runs over the rows that batch added. A match
// becomes an Alert, deduplicated per (rule, host, pid, start); when the
// rule's action asks for it, the Alert carries a TraceRequest that the
// center turns (policy and approvals permitting) into a TraceCommand down
// the tree. On the agent, AgentEngine does the same over the agent's own
// events for rules marked runs_on: agent, so that a local trigger does not
// wait for the round trip.
//
// # Pack format
//
// A pack is one YAML file. Keys are strict: an unknown or repeated key is an
// error with its line number, as is every other problem Parse finds.
//
//	format: 1                  # optional; the pack format version
//	pack: default              # name: lowercase letters, digits, . _ -
//	version: "1.0.0"
//	description: ...           # optional
//	rules:
//	  - id: webserver-spawns-shell      # unique in the pack (and the engine)
//	    title: Web server process started a shell
//	    description: ...                # optional
//	    severity: high                  # info, low, medium, high, critical
//	    attack: T1505.003               # ATT&CK technique id
//	    runs_on: [center, agent]        # or center, agent, both; default center
//	    sql: |
//	      SELECT e.host, e.pid, e.start, e.time, e.cmdline
//	      FROM new_process_events e JOIN processes p
//	        ON p.host = e.host AND p.pid = e.ppid AND p.start = e.pstart
//	      WHERE e.kind = 'exec' AND ...
//	    action:                         # optional: every match is an alert
//	      alert: true                   # optional, the only allowed value
//	      trace: {depth: 4, duration: 30m, collect: [cmdlines, network, files]}
//	    fixtures:                       # at least one (Check)
//	      - name: apache runs bash
//	        rows:                       # table -> rows (column: value)
//	          processes:
//	            - {pid: 100, start: 50, comm: apache2, exe: /usr/sbin/apache2}
//	          process_events:
//	            - {kind: exec, pid: 200, start: 90, ppid: 100, pstart: 50,
//	               comm: bash, exe: /usr/bin/bash, argv: [bash, -c, id]}
//	        expect:                     # count, matches, or both
//	          count: 1                  # distinct (host, pid, start) matched
//	          matches: [{pid: 200, start: 90}]   # host defaults to host-1
//
// trace.collect takes cmdlines, network, files and memory (the bits of the
// traces.flags column); depth is 1..64 and duration 1s..24h.
//
// Fixture rows: values are YAML scalars (booleans become 0/1, timestamps
// Unix nanoseconds); a list or mapping is stored as JSON text, and an argv
// list in sqlstore's argv encoding, with cmdline filled in from it unless
// given. Required columns a row leaves out are filled: host "host-1",
// batch_seq 1, idx and seq by row position, time from 2023-11-14 in steps of
// 1ms. Rows are inserted in file order into a fresh database per fixture.
//
// # Incremental contract
//
// A rule is one SELECT (or WITH ... SELECT) that must read at least one of
// three views of the rows that are new to it:
//
//	new_process_events   process_events rows with since < id <= until
//	new_network_events   network_events rows, the same
//	new_file_events      file_events rows, the same
//
// where since is the rule's cursor for that table (the last id it has
// evaluated; 0 for a new rule, so a new rule works through the store's
// history in chunks) and until is the table's newest id when the run began,
// capped at since + Config.ChunkRows. The engine defines the views as CTEs
// in front of the rule's statement (merged into the rule's own WITH list,
// RECURSIVE kept), so they cost nothing when unused. The bounds are also
// bound parameters a rule may name: :since_process_events,
// :until_process_events, and the same for network_events and file_events.
// No other parameter is allowed. The rule may join any table (processes
// for parents, hosts, exe_hashes...): only the views are incremental.
//
// After a good run every cursor advances to its until, and the cursors,
// the run's status (rule_runs) and the alerts are stored in one
// transaction (rule_cursors), so a restart resumes exactly where the last
// stored run ended. Event ids only grow (AUTOINCREMENT, one writer), so a
// row is evaluated by each rule exactly once unless a run fails, in which
// case the cursor stays and the same rows are evaluated again next pass.
//
// The result must have columns host, pid and start naming the process to
// flag (rows where they are NULL are skipped). An optional integer time
// column is the alert's time (else the time it was found). Every other
// column is alert context, stored as JSON in alerts.context.
//
// # Limits and failures
//
// Each run of each rule has a time limit (Config.Timeout, default 2s on the
// center, 500ms on agents): SQLite is interrupted when it passes. A run
// that errors or times out is counted and recorded (rule_runs.last_error);
// after Config.MaxFailures (3) consecutive failures the rule is disabled
// and reported ("disabled: ..."), not retried for ever. At most
// Config.MaxMatches rows are read per run. Rules run on connections that
// cannot write (the center's read-only pool) or under an allow-list
// authorizer (Check's scratch databases and the agent's window), with
// ATTACH disabled and values capped at 16 MiB.
//
// # Validation
//
// Check validates a pack against the center's schema (and AgentSchema for
// agent rules): shape, read-only (the authorizer refuses INSERT, UPDATE,
// DELETE even inside a WITH, ATTACH, PRAGMA, CREATE...), known tables and
// columns (an unknown one is named; double-quoted identifiers are refused
// because SQLite reads an unknown "name" as a string), the required result
// columns, and then runs every fixture. `daemoneye rules check PACK` prints
// the report.
//
// # Signing
//
// Packs are signed as files: Sign is Ed25519 over a domain-separation
// prefix and the exact bytes, written base64 to PACK.sig by `daemoneye rules
// sign`. Load and Open verify against the trusted keys before parsing and
// refuse an unsigned or badly signed pack unless the configuration allows
// unsigned packs. The built-in default pack (Default) ships inside the
// binary and is covered by the release signature.
package rules
