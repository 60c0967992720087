package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/signerd/signerd/policyengine"
)

type callerKey struct{}

// peerCaller reads SO_PEERCRED once per connection and resolves the uid and gid to names.
// The pid is informational only (it can be reused); authorization uses uid and gid.
func peerCaller(c net.Conn) (*policyengine.Caller, error) {
	if lc, ok := c.(*limitConn); ok {
		c = lc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, net.UnknownNetworkError("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, cerr
	}
	caller := &policyengine.Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	caller.User = names.user(cred.Uid)
	caller.Group = names.group(cred.Gid)
	caller.Groups = supplementaryGroups(cred.Pid)
	caller.Exe, caller.ExeSHA256 = exeOf(cred.Pid)
	return caller, nil
}

// nameCache caches uid/gid → name lookups (os/user reads /etc/passwd and /etc/group).
type nameCache struct {
	mu     sync.Mutex
	users  map[uint32]string
	groups map[uint32]string
}

var names = &nameCache{users: map[uint32]string{}, groups: map[uint32]string{}}

func (n *nameCache) user(uid uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.users[uid]; ok {
		return s
	}
	s := ""
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		s = u.Username
	}
	n.users[uid] = s
	return s
}

func (n *nameCache) group(gid uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.groups[gid]; ok {
		return s
	}
	s := ""
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		s = g.Name
	}
	n.groups[gid] = s
	return s
}

// supplementaryGroups reads the peer's supplementary groups from /proc (best effort: the pid
// may already be gone; then only the primary group counts).
func supplementaryGroups(pid int32) []string {
	if pid <= 0 {
		return nil
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Groups:")
		if !ok {
			continue
		}
		var out []string
		for _, f := range strings.Fields(rest) {
			g, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				continue
			}
			if name := names.group(uint32(g)); name != "" {
				out = append(out, name)
			}
		}
		return out
	}
	return nil
}

// connContext attaches the peer's credentials to every request of the connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	caller, err := peerCaller(c)
	if err != nil {
		return ctx // no caller in the context: every route refuses it
	}
	return context.WithValue(ctx, callerKey{}, caller)
}

// CallerFrom returns the peer credentials of the request's connection.
func CallerFrom(ctx context.Context) (*policyengine.Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*policyengine.Caller)
	return c, ok
}

// exeHashes caches executable hashes by file identity, so a binary is hashed once.
var exeHashes sync.Map // exeKey → string

type exeKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

// exeOf returns the peer's executable path and the SHA-256 of the executable it runs. The file
// is opened through /proc/PID/exe, so it is the mapped binary even if the path was replaced
// since. Best effort: without permission (another uid, daemon not root) both stay empty and
// policy rules on exe or exe_sha256 do not match (fail closed).
//
// Not a boundary against the peer's own uid: a same-uid process can connect from a child that
// execs the pinned binary while the parent keeps the socket, and /proc then shows the pinned
// binary. Pins on exe are defence in depth (docs/policy.md); uid/gid are the boundary.
func exeOf(pid int32) (path, sum string) {
	if pid <= 0 {
		return "", ""
	}
	link := "/proc/" + strconv.Itoa(int(pid)) + "/exe"
	path, err := os.Readlink(link)
	if err != nil {
		return "", ""
	}
	f, err := os.Open(link)
	if err != nil {
		return path, ""
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return path, ""
	}
	k := exeKey{uint64(st.Dev), st.Ino, st.Size, st.Mtim.Nano()}
	if v, ok := exeHashes.Load(k); ok {
		return path, v.(string)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return path, ""
	}
	sum = hex.EncodeToString(h.Sum(nil))
	exeHashes.Store(k, sum)
	return path, sum
}
