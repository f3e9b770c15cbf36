package capture

// Seed reads the process table from procRoot ("/proc" when empty) when the
// agent starts, so that processes already running have identities and
// parents before the first event arrives. argv is capped at argvMax bytes
// (the default cap when argvMax <= 0). Processes that exit during the scan
// are left out; every returned Process is marked Seeded.
func Seed(procRoot string, argvMax int) ([]Process, error) {
	return scanProcesses(procRoot, argvMax)
}

// SeedOptions is Seed with the procfs root, argv cap and scope of opts:
// only the processes in opts.Scope are returned. A scope that does not
// parse is an error that wraps ErrBadScope.
func SeedOptions(opts Options) ([]Process, error) {
	sc, err := ParseScope(opts.Scope)
	if err != nil {
		return nil, err
	}
	procs, err := scanProcesses(opts.ProcRoot, opts.ArgvMaxBytes)
	if err != nil {
		return nil, err
	}
	return scopeProcesses(sc, opts.ProcRoot, procs), nil
}
