package policyengine

import (
	"fmt"
	"strings"
)

// CompileError is one problem in a policy source, located by file, line, column and the path of
// the offending element (e.g. rules[allow-research].sellers[2]).
type CompileError struct {
	File string
	Line int
	Col  int
	Path string
	Msg  string
}

func (e *CompileError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Col)
	}
	if e.Path != "" {
		return fmt.Sprintf("%s: %s: %s", loc, e.Path, e.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, e.Msg)
}

// CompileErrors is every problem found in one compilation (at most maxErrors), in source order.
type CompileErrors []*CompileError

const maxErrors = 50

func (es CompileErrors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}
