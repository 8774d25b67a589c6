package manager

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// lookupUser resolves a user name or numeric uid to uid and primary gid.
func lookupUser(name string) (uid, gid uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		return 0, 0, err
	}
	id, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("uid %q: %w", u.Uid, err)
	}
	g, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("gid %q: %w", u.Gid, err)
	}
	return uint32(id), uint32(g), nil
}

// checkUIDRange makes sure the first `children` uids of r can be the slots'
// own uids and its last the compile uid: enough of them, none of them
// shared (the children's effective uid), none belonging to an account (its
// processes could signal the child, and the child its processes).
func checkUIDRange(r config.UIDRange, children int, shared uint32) error {
	// One uid per slot, and the last one for compiling (it owns the
	// compilation cache, which children may only read).
	if children+1 > r.Size() {
		return fmt.Errorf("[pool] uid_range %s holds %d uids, fewer than the %d children plus one for compiling: widen it", r, r.Size(), children)
	}
	for _, uid := range append(slotUIDs(r, children), r.Last) {
		if uid == shared {
			return fmt.Errorf("[pool] uid_range %s holds %d, the uid of pool.user: choose a range of unused uids", r, uid)
		}
		u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
		if err == nil {
			return fmt.Errorf("[pool] uid_range %s holds uid %d, which belongs to %q: choose a range of unused uids", r, uid, u.Username)
		}
		if !errors.As(err, new(user.UnknownUserIdError)) {
			return fmt.Errorf("[pool] uid_range: look up uid %d: %w", uid, err)
		}
	}
	return nil
}

// slotUIDs are the uids of the first n slots of r.
func slotUIDs(r config.UIDRange, n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = r.First + uint32(i)
	}
	return out
}
