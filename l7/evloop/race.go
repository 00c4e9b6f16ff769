//go:build race

package evloop

import (
	"runtime"
	"unsafe"
)

// ioSync makes reads and writes synchronization points for the race
// detector, as the net package's are: what a goroutine did before a
// write is visible to one that read what followed it.
var ioSync int64

func raceReleaseMerge() { runtime.RaceReleaseMerge(unsafe.Pointer(&ioSync)) }
func raceAcquire()      { runtime.RaceAcquire(unsafe.Pointer(&ioSync)) }
