package main
import (
 _ "github.com/cilium/ebpf"
 _ "github.com/cilium/ebpf/link"
 _ "github.com/vishvananda/netlink"
 _ "gopkg.in/yaml.v3"
 _ "golang.org/x/sys/unix"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/miekg/dns"
)
func main(){}
