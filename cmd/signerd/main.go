// Command signerd is the signing daemon: `signerd run --config FILE` for production and
// `signerd dev --dir DIR` for a self-contained development instance (SoftHSM2 token, wallet key,
// development policy and sockets in DIR).
//
// Signals: SIGTERM/SIGINT drain in-flight requests and exit; SIGHUP reloads the policy (a
// policy that fails to compile leaves the last good one in force); SIGUSR1 engages the kill
// switch.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/signerd/signerd/hsm"
	_ "github.com/signerd/signerd/hsm/backends"
	"github.com/signerd/signerd/hsm/pkcs11"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/hardening"
	"github.com/signerd/signerd/signerd/server"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  signerd run --config FILE     run with a YAML configuration
  signerd dev --dir DIR         run a development instance in DIR (SoftHSM2 token, wallet, dev policy)
`)
}

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	// The heap is small and the hot path allocates per request: collect less often unless the
	// operator chose (GOGC).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// Harden before anything secret is read.
	rep, err := hardening.Apply()
	if err != nil {
		fmt.Fprintln(stderr, "signerd:", err)
		return 1
	}
	var cfg *config.Config
	var backend hsm.Backend
	switch args[0] {
	case "run":
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "/etc/signerd/signerd.yaml", "configuration file")
		prof := fs.String("cpuprofile", "", "write a Go CPU profile to this file until the daemon stops (diagnostics)")
		if err := fs.Parse(args[1:]); err != nil {
			return helpOrUsage(err)
		}
		stop, err := startCPUProfile(*prof)
		if err != nil {
			fmt.Fprintln(stderr, "signerd:", err)
			return 1
		}
		defer stop()
		if cfg, err = config.Load(*path); err != nil {
			fmt.Fprintln(stderr, "signerd:", err)
			return 1
		}
	case "dev":
		fs := flag.NewFlagSet("dev", flag.ContinueOnError)
		fs.SetOutput(stderr)
		dir := fs.String("dir", ".signerd-dev", "state directory of the development instance")
		if err := fs.Parse(args[1:]); err != nil {
			return helpOrUsage(err)
		}
		if cfg, backend, err = provisionDev(*dir, stderr); err != nil {
			fmt.Fprintln(stderr, "signerd dev:", err)
			return 1
		}
	case "-h", "--help", "help":
		usage(stderr)
		return 0
	default:
		usage(stderr)
		return 2
	}
	log := newLogger(stderr, cfg.LogLevel)
	log.Info("hardened", "dumpable", rep.Dumpable, "core_limit", rep.CoreLimit, "umask", fmt.Sprintf("%04o", rep.Umask))
	if err := checkSecrets(cfg); err != nil {
		log.Error("refusing to start", "err", err)
		return 1
	}
	ctx := context.Background()
	d, err := server.Open(ctx, server.Options{Config: cfg, Logger: log, Backend: backend})
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- d.Serve() }()
	for {
		select {
		case err := <-done:
			if err != nil {
				log.Error("server stopped", "err", err)
				sctx, cancel := context.WithTimeout(ctx, cfg.Limits.DrainTimeout)
				_ = d.Shutdown(sctx)
				cancel()
				return 1
			}
			return 0
		case s := <-sigs:
			switch s {
			case syscall.SIGHUP:
				if info, err := d.ReloadPolicy(ctx, "signal", "SIGHUP"); err != nil {
					log.Error("SIGHUP: policy not reloaded", "err", err)
				} else {
					log.Info("SIGHUP: policy reloaded", "hash", info.Hash, "changed", info.Changed)
				}
			case syscall.SIGUSR1:
				go func() {
					ectx, cancel := context.WithTimeout(ctx, time.Minute)
					defer cancel()
					if err := d.EngageKillSwitch(ectx, "signal", "SIGUSR1"); err != nil {
						log.Error("SIGUSR1: kill switch engaged but not drained", "err", err)
					} else {
						log.Warn("SIGUSR1: kill switch engaged")
					}
				}()
			default:
				log.Info("draining", "signal", s.String())
				sctx, cancel := context.WithTimeout(ctx, cfg.Limits.DrainTimeout)
				err := d.Shutdown(sctx)
				cancel()
				if err != nil {
					log.Error("shutdown", "err", err)
					return 1
				}
				log.Info("stopped cleanly")
				return 0
			}
		}
	}
}

// helpOrUsage is the exit code for a flag parse error: 0 for -h/--help, 2 otherwise.
func helpOrUsage(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

// checkSecrets refuses PIN files others can read.
func checkSecrets(cfg *config.Config) error {
	if f := cfg.HSM.PKCS11.PINFile; cfg.HSM.Type == "pkcs11" && f != "" {
		if err := hardening.CheckSecretFile(f); err != nil {
			return fmt.Errorf("PIN file: %w", err)
		}
	}
	return nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	switch level {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// provisionDev prepares DIR for a development instance: a SoftHSM2 configuration and token
// (PIN in a 0600 file), the development policy, and one wallet key on the token. It is
// idempotent: an existing token, PIN, policy and keys are reused.
func provisionDev(dir string, stderr io.Writer) (*config.Config, hsm.Backend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	cfg, err := config.Dev(dir)
	if err != nil {
		return nil, nil, err
	}
	hdir, err := pkcs11.WriteSoftHSMDir(filepath.Join(filepath.Dir(cfg.Policy), "hsm"))
	if err != nil {
		return nil, nil, fmt.Errorf("softhsm dir: %w", err)
	}
	cfg.HSM.PKCS11.Module = pkcs11.SoftHSMModule()
	cfg.HSM.PKCS11.ModuleEnv = map[string]string{"SOFTHSM2_CONF": hdir.Conf}
	pinFile := cfg.HSM.PKCS11.PINFile
	if _, err := hdir.TokenPath(config.DevTokenLabel); err != nil {
		if _, err := os.Stat(pinFile); err == nil {
			return nil, nil, fmt.Errorf("%s exists but the token %q does not; remove %s to start over", pinFile, config.DevTokenLabel, dir)
		}
		pin, so := pkcs11.RandomPIN(), pkcs11.RandomPIN()
		if err := hdir.InitToken(config.DevTokenLabel, pin, so); err != nil {
			return nil, nil, err
		}
		if err := pkcs11.WritePINFile(pinFile, pin); err != nil {
			return nil, nil, err
		}
		clear(pin)
		clear(so)
		fmt.Fprintf(stderr, "signerd dev: initialised SoftHSM2 token %q in %s (PIN in %s)\n", config.DevTokenLabel, hdir.TokenDir, pinFile)
	}
	if _, err := os.Stat(cfg.Policy); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(cfg.Policy, config.DevPolicy, 0o600); err != nil {
			return nil, nil, err
		}
	}
	if err := hardening.CheckSecretFile(pinFile); err != nil {
		return nil, nil, err
	}
	ctx := context.Background()
	b, err := hsm.Open(ctx, cfg.HSM)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the dev token: %w", err)
	}
	keys, err := b.List(ctx)
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	active := 0
	for _, k := range keys {
		if !k.Retired {
			active++
		}
	}
	if active == 0 {
		k, err := b.Generate(ctx, hsm.GenerateOptions{Label: "dev-wallet"})
		if err != nil {
			b.Close()
			return nil, nil, fmt.Errorf("generating the dev wallet: %w", err)
		}
		fmt.Fprintf(stderr, "signerd dev: generated wallet %s (%s)\n", k.Address.Hex(), k.URI)
	}
	fmt.Fprintf(stderr, "signerd dev: agents use %s; operators: export SIGNERD_ADMIN_SOCKET=%s (signerctl --socket)\n",
		cfg.Sockets.Agent.Path, cfg.Sockets.Admin.Path)
	return cfg, b, nil
}

// startCPUProfile writes a CPU profile to path (created 0600, never overwritten) until the
// returned function is called; no path, no profile.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
