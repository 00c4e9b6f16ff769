package proxy

import (
	"github.com/sluicelb/sluice/l7/eject"
)

// Observer is told what the proxy does, for metrics. Its methods are called
// from request goroutines and must not block.
type Observer interface {
	// Request is called once per finished request with its tries.
	Request(rec *Record)
	// Ejection is called for every ejection or trial recovery the proxy
	// asked the pool for, including refused ones (ev.Err set).
	Ejection(service string, ev eject.Event)
	// Panic is called when the service enters (on) or leaves panic mode:
	// too much of its pool is ejected, load is spread over every address.
	Panic(service string, on bool)
}

// NopObserver ignores everything.
type NopObserver struct{}

var _ Observer = NopObserver{}

// Request implements Observer.
func (NopObserver) Request(*Record) {}

// Ejection implements Observer.
func (NopObserver) Ejection(string, eject.Event) {}

// Panic implements Observer.
func (NopObserver) Panic(string, bool) {}
