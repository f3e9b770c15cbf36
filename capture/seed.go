package capture

// Seed reads the process table from procRoot ("/proc" when empty) when the
// agent starts, so that processes already running have identities and
// parents before the first event arrives. argv is capped at argvMax bytes
// (the default cap when argvMax <= 0). Processes that exit during the scan
// are left out; every returned Process is marked Seeded.
func Seed(procRoot string, argvMax int) ([]Process, error) {
	return scanProcesses(procRoot, argvMax)
}
