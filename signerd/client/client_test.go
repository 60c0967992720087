package client

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
)

// serve runs h on a real Unix socket in a temp dir and returns its path.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestClient(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusUnsupportedMediaType)
			return
		}
		var b bytes.Buffer
		b.ReadFrom(r.Body)
		w.Write(b.Bytes())
	})
	mux.HandleFunc("GET /denied", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"error":{"code":"seller_not_allowed","reason":"no rule","rule":"r1","record_id":"7"}}`))
	})
	mux.HandleFunc("GET /plain", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusBadGateway) })
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("a\nb\n")) })
	c := New(serve(t, mux))

	var out struct{ N int }
	if err := c.Do("POST", "/echo", map[string]int{"n": 3}, &out); err != nil || out.N != 3 {
		t.Fatalf("echo: %+v %v", out, err)
	}
	var e *Error
	err := c.Do("GET", "/denied", nil, nil)
	if !errors.As(err, &e) || e.Status != 403 || e.Code != "seller_not_allowed" || e.Rule != "r1" || e.RecordID != "7" {
		t.Fatalf("denied: %#v", err)
	}
	if errors.Is(err, ErrUnreachable) {
		t.Fatal("an answer is not unreachable")
	}
	if err := c.Do("GET", "/plain", nil, nil); !errors.As(err, &e) || e.Status != 502 || e.Code != "http_502" {
		t.Fatalf("plain error: %#v", err)
	}
	var b bytes.Buffer
	if err := c.Stream("GET", "/stream", &b); err != nil || b.String() != "a\nb\n" {
		t.Fatalf("stream: %q %v", b.String(), err)
	}
	if err := c.Stream("GET", "/denied", &b); !errors.As(err, &e) || e.Code != "seller_not_allowed" {
		t.Fatalf("stream error: %#v", err)
	}
	gone := New(filepath.Join(t.TempDir(), "none.sock"))
	if err := gone.Do("GET", "/x", nil, nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("missing socket: %v", err)
	}
}
