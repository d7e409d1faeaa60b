// CoreDNS with only the plugins the real-node lane's cluster DNS uses: the cluster's
// Services and headless-Service pod names (kubernetes), on one address (bind), with errors
// logged. Built by build-binaries.sh (component coredns) in a wrapper module whose go.mod is
// CoreDNS's own; leaving out the other plugins (cloud DNS providers, ...) keeps a cold
// build short.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func init() {
	dnsserver.Directives = []string{"bind", "errors", "kubernetes"}
}

func main() {
	coremain.Run()
}
