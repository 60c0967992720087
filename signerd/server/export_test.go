package server

import "github.com/signerd/signerd/hsm"

// BackendForTest returns the key backend in use (tests only).
func (d *Daemon) BackendForTest() hsm.Backend { return d.be() }
