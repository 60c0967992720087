package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/signerd/signerd/signerd/client"
)

// defaultAdminSocket is where signerctl looks for a daemon's admin socket when neither
// --socket nor SIGNERD_ADMIN_SOCKET says otherwise.
const defaultAdminSocket = "/run/signerd/admin.sock"

// adminSocket resolves the admin socket path from a --socket flag value and the environment.
func adminSocket(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := os.Getenv("SIGNERD_ADMIN_SOCKET"); env != "" {
		return env
	}
	return defaultAdminSocket
}

func init() {
	register("metrics", "print a running daemon's Prometheus metrics (metrics [PREFIX...])", cmdMetrics)
}

// cmdMetrics prints GET /metrics of the admin socket (Prometheus text format). With PREFIX
// arguments only the metric families whose names start with one of them are printed, with
// their HELP and TYPE lines.
func cmdMetrics(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("signerctl metrics", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "admin socket path (default $SIGNERD_ADMIN_SOCKET or "+defaultAdminSocket+")")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: signerctl metrics [--socket PATH] [PREFIX...]   e.g. signerctl metrics signerd_")
		fs.PrintDefaults()
	}
	var prefixes []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		prefixes = append(prefixes, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	var body bytes.Buffer
	err := client.New(adminSocket(*socket)).Stream("GET", "/metrics", &body)
	if err != nil {
		noJSON := false
		return (&adminFlags{json: &noJSON}).fail(err, stdout, stderr)
	}
	if len(prefixes) == 0 {
		stdout.Write(body.Bytes())
		return exitOK
	}
	sc := bufio.NewScanner(&body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name := line
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && (f[1] == "HELP" || f[1] == "TYPE") {
			name = f[2]
		}
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				fmt.Fprintln(stdout, line)
				break
			}
		}
	}
	return exitOK
}
