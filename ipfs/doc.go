// Package ipfs connects wagi-fcgi to a kubo node's RPC API: modules fetched
// by CID or IPNS name, read-only UnixFS volumes, and writable directories in
// the node's mutable file system (MFS).
package ipfs
