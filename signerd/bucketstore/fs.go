package bucketstore

import (
	"strings"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// countingFS is the operating system's file system, counting the syncs of write-ahead-log
// files (DB.Syncs): one per fdatasync, however many commits it made durable.
type countingFS struct {
	vfs.FS
	syncs *atomic.Uint64
}

func (fs countingFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return countingFile{File: f, syncs: fs.syncs}, nil
}

// Create implements vfs.FS.
func (fs countingFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return fs.wrap(name, f, err)
}

// ReuseForWrite implements vfs.FS (recycled write-ahead-log files).
func (fs countingFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return fs.wrap(newname, f, err)
}

// OpenReadWrite implements vfs.FS.
func (fs countingFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, category, opts...)
	return fs.wrap(name, f, err)
}

type countingFile struct {
	vfs.File
	syncs *atomic.Uint64
}

// Sync implements vfs.File.
func (f countingFile) Sync() error {
	err := f.File.Sync()
	if err == nil {
		f.syncs.Add(1)
	}
	return err
}

// SyncData implements vfs.File.
func (f countingFile) SyncData() error {
	err := f.File.SyncData()
	if err == nil {
		f.syncs.Add(1)
	}
	return err
}
