//go:build race

package proxy

// raceOn: the tests run with the race detector, whose instrumentation
// allocates, and whose sync.Pool drops a quarter of what is put back.
const raceOn = true
