package agent

import (
	"reflect"
	"testing"

	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
	l7service "github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/userspace/config"
)

// A file that sets nothing gets exactly the l7 packages' defaults: the
// config fills its keys from them and the agent hands them back unchanged.
func TestL7OptionsFromConfigDefaults(t *testing.T) {
	cfg, err := config.Parse([]byte(`
pools:
  - name: web
    backends: [{address: 198.18.2.10:80}]
services:
  - name: web-http
    listen: 198.18.1.101:80
    protocol: http
    pool: web
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	svc := proxyService(cfg.Services[0])
	if svc.Timeouts != l7service.DefaultTimeouts() {
		t.Errorf("timeouts %+v, want %+v", svc.Timeouts, l7service.DefaultTimeouts())
	}
	if want := retry.DefaultConfig(); svc.Retry == nil || !reflect.DeepEqual(*svc.Retry, want) {
		t.Errorf("retry %+v, want %+v", svc.Retry, want)
	}
	if !reflect.DeepEqual(svc.Upgrades, l7service.DefaultUpgrades()) {
		t.Errorf("upgrades %v, want %v", svc.Upgrades, l7service.DefaultUpgrades())
	}
	if svc.Host != l7service.HostKeep || svc.Pool != "web" || svc.Name != "web-http" {
		t.Errorf("service %+v", svc)
	}
	if ej := ejectionConfig(cfg.Pools[0].Ejection); !reflect.DeepEqual(ej, eject.DefaultConfig()) {
		t.Errorf("ejection %+v, want %+v", ej, eject.DefaultConfig())
	}
}
