package wal

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// The outbox holds commands travelling down the tree, per target agent,
// until the agent acknowledges them or they expire. It lives in the same
// database as the lanes.

// Command is one queued command.
type Command struct {
	Target  string
	ID      string
	Expires int64 // Unix ns; 0 = never
	Data    []byte
}

func outboxKey(target, id string) []byte {
	k := make([]byte, 0, 2+len(target)+len(id))
	k = append(k, 'o')
	k = append(k, target...)
	k = append(k, 0)
	return append(k, id...)
}

// PutCommand stores a command durably (fsync) before it is forwarded.
func (w *WAL) PutCommand(c Command) error {
	if c.Target == "" || c.ID == "" {
		return errors.New("wal: command needs a target and an id")
	}
	if err := w.enter(); err != nil {
		return err
	}
	defer w.leave()
	v := make([]byte, 8+len(c.Data))
	binary.BigEndian.PutUint64(v, uint64(c.Expires))
	copy(v[8:], c.Data)
	if err := w.db.Set(outboxKey(c.Target, c.ID), v, pebble.Sync); err != nil {
		return fmt.Errorf("wal: put command: %w", err)
	}
	return nil
}

// DeleteCommand removes a command once it is acknowledged.
func (w *WAL) DeleteCommand(target, id string) error {
	if err := w.enter(); err != nil {
		return err
	}
	defer w.leave()
	if err := w.db.Delete(outboxKey(target, id), pebble.NoSync); err != nil {
		return fmt.Errorf("wal: delete command: %w", err)
	}
	return nil
}

// Commands lists queued commands; for one target when target is not empty.
func (w *WAL) Commands(target string) ([]Command, error) {
	if err := w.enter(); err != nil {
		return nil, err
	}
	defer w.leave()
	lo, hi := []byte{'o'}, []byte{'p'}
	if target != "" {
		lo = outboxKey(target, "")
		hi = append(outboxKey(target, "")[:len(lo)-1], 1)
	}
	it, err := w.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("wal: commands: %w", err)
	}
	defer it.Close()
	var out []Command
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key()[1:], it.Value()
		i := indexByte(k, 0)
		if i < 0 || len(v) < 8 {
			return nil, fmt.Errorf("wal: malformed outbox entry %q", it.Key())
		}
		out = append(out, Command{
			Target: string(k[:i]), ID: string(k[i+1:]),
			Expires: int64(binary.BigEndian.Uint64(v)), Data: append([]byte(nil), v[8:]...),
		})
	}
	return out, it.Error()
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
