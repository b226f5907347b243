package client

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"
)

// resolvConfPath does not exist on Windows: names outside the org domain never reach Ferry's
// resolver there (NRPT sends only the domain), so there is nothing to forward to.
const resolvConfPath = `C:\nonexistent\resolv.conf`

// nrptComment marks Ferry's Name Resolution Policy Table rules, so they can be found and removed.
const nrptComment = "ferry-vnet"

// configureDNS adds an NRPT rule (Add-DnsClientNrptRule) sending the org domain to Ferry's
// resolver; undo and the next start remove every rule carrying Ferry's comment. Not exercised by
// the tests (Linux).
func configureDNS(ctx context.Context, dirs Dirs, spec dnsSpec, log *slog.Logger) (func() error, error) {
	_ = recoverDNS(dirs, log)
	ns := "." + strings.TrimSuffix(spec.Domain, ".")
	if err := powershell(ctx, fmt.Sprintf("Add-DnsClientNrptRule -Namespace '%s' -NameServers '%s' -Comment '%s'", ns, spec.Server, nrptComment)); err != nil {
		return nil, err
	}
	log.Info("DNS: NRPT rule sends the org domain to Ferry's resolver", "namespace", ns, "resolver", spec.Server)
	return func() error { return recoverDNS(dirs, log) }, nil
}

// recoverDNS removes Ferry's NRPT rules.
func recoverDNS(dirs Dirs, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return powershell(ctx, fmt.Sprintf("Get-DnsClientNrptRule | Where-Object { $_.Comment -eq '%s' } | Remove-DnsClientNrptRule -Force", nrptComment))
}

func powershell(ctx context.Context, script string) error {
	out, err := exec.CommandContext(ctx, "powershell.exe", "-NoProfile", "-NonInteractive", "-Command", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("DNS: powershell %q: %w: %s", script, err, strings.TrimSpace(string(out)))
	}
	return nil
}
