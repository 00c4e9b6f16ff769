package main

import (
	"fmt"
	"io"
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
