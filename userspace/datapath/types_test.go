package datapath

import (
	"encoding"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// TestNamesRoundTrip: every value of every data-path enum has a name that
// UnmarshalText reads back, and an unknown name is refused.
func TestNamesRoundTrip(t *testing.T) {
	type textual interface {
		encoding.TextMarshaler
		fmt.Stringer
	}
	check := func(v textual, back encoding.TextUnmarshaler, get func() any) {
		t.Helper()
		b, err := v.MarshalText()
		if err != nil || string(b) != v.String() {
			t.Fatalf("%v: MarshalText %q, %v", v, b, err)
		}
		if err := back.UnmarshalText(b); err != nil {
			t.Fatalf("%v: UnmarshalText(%q): %v", v, b, err)
		}
		if got := get(); got != any(v) {
			t.Errorf("%q read back as %v", b, got)
		}
		if err := back.UnmarshalText([]byte("no-such-name")); !errors.Is(err, ErrUnknownName) {
			t.Errorf("%T: unknown name: %v, want ErrUnknownName", back, err)
		}
	}
	for v := range protoNames {
		var p Proto
		check(v, &p, func() any { return p })
	}
	for v := range modeNames {
		var m Mode
		check(v, &m, func() any { return m })
	}
	for v := range backendStateNames {
		var s BackendState
		check(v, &s, func() any { return s })
	}
	for v := range flowStateNames {
		var s FlowState
		check(v, &s, func() any { return s })
	}
	if got := BackendState(200).String(); got != "state(200)" {
		t.Errorf("unknown state named %q", got)
	}
	if got := Proto(1).String(); got != "proto(1)" {
		t.Errorf("unknown protocol named %q", got)
	}
}

// TestEveryEnumValueNamed: the generated enums and the name tables agree,
// so a state added in consts.h without a name fails here.
func TestEveryEnumValueNamed(t *testing.T) {
	for _, v := range []bpf.SluiceBackendState{bpf.SluiceBackendStateBACKEND_FREE, bpf.SluiceBackendStateBACKEND_ACTIVE,
		bpf.SluiceBackendStateBACKEND_DRAINING, bpf.SluiceBackendStateBACKEND_EJECTED, bpf.SluiceBackendStateBACKEND_REMOVED} {
		if _, ok := backendStateNames[BackendState(v)]; !ok {
			t.Errorf("backend state %d has no name", v)
		}
	}
	for _, v := range []bpf.SluiceCtState{bpf.SluiceCtStateCT_NEW, bpf.SluiceCtStateCT_SYN_SENT, bpf.SluiceCtStateCT_ESTABLISHED,
		bpf.SluiceCtStateCT_CLOSING, bpf.SluiceCtStateCT_UDP, bpf.SluiceCtStateCT_SYN_RECV} {
		if _, ok := flowStateNames[FlowState(v)]; !ok {
			t.Errorf("flow state %d has no name", v)
		}
	}
	for _, v := range []bpf.SluiceSvcMode{bpf.SluiceSvcModeMODE_NAT, bpf.SluiceSvcModeMODE_SNAT, bpf.SluiceSvcModeMODE_DSR} {
		if _, ok := modeNames[Mode(v)]; !ok {
			t.Errorf("mode %d has no name", v)
		}
	}
	if len(backendStateNames) != 5 || len(flowStateNames) != 6 || len(modeNames) != 3 {
		t.Errorf("name tables list values the C enums do not have")
	}
}

// TestSpecMatchesLimits: the map sizes compiled into the program are the
// ones the agent allocates ids and slots from; a changed MAX_SERVICES or
// MAX_BACKENDS in consts.h fails here (and at load).
func TestSpecMatchesLimits(t *testing.T) {
	spec, err := bpf.LoadSluice()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSpec(spec); err != nil {
		t.Fatal(err)
	}
	spec.Maps["backends"].MaxEntries = MaxBackends / 2
	if err := checkSpec(spec); !errors.Is(err, ErrLayout) {
		t.Fatalf("a smaller backends map: %v, want ErrLayout", err)
	}
}

// TestVerifierErrorWrapped: a verifier failure is wrapped, so errors.As
// finds it, and its message carries the whole log, not only the summary.
func TestVerifierErrorWrapped(t *testing.T) {
	ve := &ebpf.VerifierError{Cause: errors.New("permission denied"), Log: []string{"0: first line", "1: R1 invalid mem access", "processed 2 insns"}}
	err := fmt.Errorf("open data path: %w", loadError(ve))
	var got *ebpf.VerifierError
	if !errors.As(err, &got) || got != ve {
		t.Fatalf("errors.As does not find the verifier error in %v", err)
	}
	for _, line := range ve.Log[:2] {
		if !strings.Contains(err.Error(), line) {
			t.Errorf("message lacks verifier line %q:\n%v", line, err)
		}
	}
}
