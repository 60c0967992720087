package server

import (
	"net/http"

	"github.com/signerd/signerd/signerd/pipeline"
)

// CodeMethodNotAllowed is the error code of a known route asked with another method (405).
const CodeMethodNotAllowed = "method_not_allowed"

// withFallback serves mux's routes and answers what no route matches with the JSON (or CBOR)
// error envelope: 405 method_not_allowed with the Allow header net/http computed when the path
// exists under other methods, 404 not_found otherwise. (A catch-all "/" pattern would hide
// net/http's 405: the mux would route every method mismatch to it.) Redirects the mux issues
// for unclean paths pass through unchanged.
func (d *Daemon) withFallback(socket string, mux *http.ServeMux) http.Handler {
	notAllowed := d.instrument(socket, "method_not_allowed", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, &pipeline.Error{Kind: pipeline.Invalid, Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
			Reason: "method " + r.Method + " not allowed on " + r.URL.Path + "; allowed: " + w.Header().Get("Allow")})
	})
	missing := d.instrument(socket, "not_found", notFound)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// No route: let the mux's own handler decide (404, 405 with Allow, or a redirect)
		// and replace its plain-text 404/405 answers with the envelope.
		h.ServeHTTP(&fallbackWriter{ResponseWriter: w, r: r, notAllowed: notAllowed, missing: missing}, r)
	})
}

// fallbackWriter intercepts net/http's plain-text 404 and 405 answers.
type fallbackWriter struct {
	http.ResponseWriter
	r                   *http.Request
	notAllowed, missing http.HandlerFunc
	replaced            bool
}

func (f *fallbackWriter) WriteHeader(code int) {
	if f.replaced {
		return
	}
	switch code {
	case http.StatusMethodNotAllowed, http.StatusNotFound:
		f.replaced = true
		h := f.ResponseWriter.Header()
		allow := h.Get("Allow")
		for k := range h {
			delete(h, k)
		}
		if code == http.StatusMethodNotAllowed {
			h.Set("Allow", allow)
			f.notAllowed(f.ResponseWriter, f.r)
		} else {
			f.missing(f.ResponseWriter, f.r)
		}
	default:
		f.ResponseWriter.WriteHeader(code)
	}
}

func (f *fallbackWriter) Write(b []byte) (int, error) {
	if f.replaced {
		return len(b), nil // the mux's plain-text body is dropped
	}
	return f.ResponseWriter.Write(b)
}
