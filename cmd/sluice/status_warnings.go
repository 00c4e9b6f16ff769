package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

// writeWarnings lists the running config's warnings (what sluice check
// prints for it), so a risky setting such as unverified backend
// certificates stays visible while it runs, not only when checked.
func writeWarnings(w io.Writer, warnings []string) {
	if len(warnings) == 0 {
		return
	}
	fmt.Fprintf(w, "CONFIG WARNINGS (%d; sluice check prints the same):\n", len(warnings))
	for _, l := range warnings {
		fmt.Fprintf(w, "  - %s\n", l)
	}
	fmt.Fprintln(w)
}

// writeRecentLog lists the agent's last warnings and errors, newest last
// (nothing from an agent that does not keep them): what went wrong lately
// without finding the agent's log.
func writeRecentLog(w io.Writer, l *admin.Log, now time.Time) {
	if l == nil {
		return
	}
	fmt.Fprintln(w)
	counts := fmt.Sprintf("%d warning%s, %d error%s since start", l.Warnings, plural(int(l.Warnings)), l.Errors, plural(int(l.Errors)))
	if len(l.Recent) == 0 {
		fmt.Fprintf(w, "log: %s\n", counts)
		return
	}
	more := ""
	if uint64(len(l.Recent)) < l.Warnings+l.Errors {
		more = fmt.Sprintf(", the last %d (the agent's log has them all)", len(l.Recent))
	}
	fmt.Fprintf(w, "RECENT WARNINGS AND ERRORS (%s%s):\n", counts, more)
	for _, e := range l.Recent {
		// The text comes quoted from the agent where it has control
		// characters; a line break is made safe here as well, should an
		// agent not.
		text := strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(e.Text)
		fmt.Fprintf(w, "  %s UTC (%s ago) %-5s %s\n", e.Time.UTC().Format(time.DateTime), since(now, e.Time), e.Level, text)
	}
}
