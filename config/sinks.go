package config

import (
	"fmt"
	"net/url"
	"regexp"
)

var sinkName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// checkSinks checks center.sinks: unique names and what each type needs.
func checkSinks(sinks []Sink) []string {
	var errs []string
	seen := map[string]bool{}
	for i, s := range sinks {
		at := fmt.Sprintf("center.sinks[%d]", i)
		if !sinkName.MatchString(s.Name) {
			errs = append(errs, fmt.Sprintf("%s.name: %q: want 1-63 of a-z, 0-9, _ and -", at, s.Name))
		} else if seen[s.Name] {
			errs = append(errs, fmt.Sprintf("%s.name: %q is used twice", at, s.Name))
		}
		seen[s.Name] = true
		switch s.Type {
		case "kafka":
			if len(s.Brokers) == 0 || s.Topic == "" {
				errs = append(errs, at+": kafka needs brokers and topic")
			}
		case "splunk_hec", "elastic":
			u, err := url.Parse(s.URL)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				errs = append(errs, fmt.Sprintf("%s.url: %s needs an https URL, got %q", at, s.Type, s.URL))
			}
			if s.Type == "splunk_hec" && s.TokenFile == "" {
				errs = append(errs, at+".token_file: splunk_hec needs the HEC token")
			}
		case "syslog":
			if s.Address == "" {
				errs = append(errs, at+".address: syslog needs host:port")
			}
		default:
			errs = append(errs, fmt.Sprintf("%s.type: %q is not one of kafka, splunk_hec, elastic, syslog", at, s.Type))
		}
		if s.TLS.Plaintext && s.Type != "kafka" {
			errs = append(errs, at+".tls.plaintext: only kafka may be plaintext")
		}
		for _, r := range s.Records {
			switch r {
			case "alert", "trace", "trace_event":
			default:
				errs = append(errs, fmt.Sprintf("%s.records: %q is not one of alert, trace, trace_event", at, r))
			}
		}
		if s.QueueRecords < 0 || s.BatchRecords < 0 || s.MaxAttempts < 0 {
			errs = append(errs, at+": queue_records, batch_records and max_attempts must not be negative")
		}
	}
	return errs
}
