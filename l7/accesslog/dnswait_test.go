package accesslog

import (
	"bytes"
	"encoding/json"
	"testing"
)

// A try after which the request waited for the pool's next DNS answer:
// its fields are encoded as encoding/json would.
func TestDNSWaitFields(t *testing.T) {
	tr := Try{Backend: "198.18.2.14:80", Outcome: "connect-failure", Phase: "connect", Millis: 0.2,
		Retry: true, Why: "waited-for-dns", DNSWait: "new-address", DNSWaitMillis: 3.5}
	want, err := json.Marshal(&tr)
	if err != nil {
		t.Fatal(err)
	}
	if got := appendTry(nil, &tr); !bytes.Equal(got, want) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
