package datapath

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPinPathHeld(t *testing.T) {
	dir := t.TempDir()
	if held, err := PinPathHeld(filepath.Join(dir, "missing")); held || err != nil {
		t.Fatalf("missing directory: held %v, %v", held, err)
	}
	if held, err := PinPathHeld(dir); held || err != nil {
		t.Fatalf("free directory: held %v, %v", held, err)
	}
	f, err := lockPinPath(dir) // what Open does for the agent's life
	if err != nil {
		t.Fatal(err)
	}
	if held, err := PinPathHeld(dir); !held || err != nil {
		t.Fatalf("locked directory: held %v, %v", held, err)
	}
	f.Close()
	if held, err := PinPathHeld(dir); held || err != nil {
		t.Fatalf("released directory: held %v, %v", held, err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
}
