package main

import "os"

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
