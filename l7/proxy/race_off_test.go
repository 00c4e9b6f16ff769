//go:build !race

package proxy

// raceOn: the tests run with the race detector (race_on_test.go).
const raceOn = false
