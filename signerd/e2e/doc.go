// Package e2e holds signerd's end-to-end tests: they build the signerd and signerctl binaries,
// run the daemon as a real process on a real SoftHSM2 token (copied from one `signerd dev`
// provisioning), and talk to it over its real Unix sockets — as root, as another uid (nobody),
// under load, across SIGKILL crashes and restarts. Everything lives in _test.go files; this
// file only names the package. Run: go test ./signerd/e2e (about a few minutes on 2 cores).
package e2e
