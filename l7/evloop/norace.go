//go:build !race

package evloop

func raceReleaseMerge() {}
func raceAcquire()      {}
