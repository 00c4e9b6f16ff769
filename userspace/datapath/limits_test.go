package datapath

import (
	"testing"

	"github.com/sluicelb/sluice/internal/defaults"
)

// The config validates against internal/defaults' copy of the data path's
// capacities (config does not import datapath): they must agree.
func TestLimitsMatchDefaults(t *testing.T) {
	if MaxServices != defaults.MaxServices || MaxBackends != defaults.MaxBackends {
		t.Fatalf("datapath %d services, %d backends; internal/defaults %d, %d",
			MaxServices, MaxBackends, defaults.MaxServices, defaults.MaxBackends)
	}
}
