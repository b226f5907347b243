// Command ferry-demo runs a whole Ferry installation on loopback: a real PostgreSQL behind the Azure
// emulator, a node, an enrolled client daemon and the example resource azure-pg-mi-prod, connected in
// loopback mode. When ready it prints
//
//	env: FERRY_CONFIG_DIR=… FERRY_RUNTIME_DIR=…
//	ready: host=127.0.0.1 port=10001 dbname=production user=mi_user sslmode=disable
//
// Export the env line in another shell to use `ferry status`, `ferry connect` and `ferry admin` as
// the demo's admin; give the ready line to psql. Ctrl-C tears everything down.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
)

func main() {
	verbose := flag.Bool("verbose", false, "log what every part does")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	fmt.Fprintln(os.Stderr, "starting PostgreSQL, the Azure emulator, ferry-node and a client daemon…")
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	env, err := demo.Start(startCtx, demo.Options{Logger: logger})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo:", err)
		os.Exit(1)
	}
	fmt.Println("env: " + env.EnvLine())
	fmt.Println("ready: " + client.ConnString(env.Resource))
	fmt.Println("node: --state " + env.NodeDir)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping…")
	if err := env.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo: stop:", err)
		os.Exit(1)
	}
}
