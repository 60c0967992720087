package server

import (
	"context"
	"net"
	"net/http"
)

// ServeAgentForTest serves the agent API on ln, as the daemon serves its agent socket. A
// connection may wrap the Unix connection if it has an InnerConnForTest method (the peer
// credentials are read from the inner one). Review tests only.
func (d *Daemon) ServeAgentForTest(ln net.Listener) *http.Server {
	srv := d.httpServer(d.agentRoutes())
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if g, ok := c.(interface{ InnerConnForTest() net.Conn }); ok {
			c = g.InnerConnForTest()
		}
		return connContext(ctx, c)
	}
	go srv.Serve(ln)
	return srv
}
