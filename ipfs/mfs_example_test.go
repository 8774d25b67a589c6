package ipfs_test

import (
	"context"
	"log"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// Mount the MFS directory /wagi/app of a local kubo node at /data in a
// guest. Files the guest writes are in MFS once it closes them, or once the
// instance is closed.
func ExampleNewMFS() {
	c, err := ipfs.New("/ip4/127.0.0.1/tcp/5001")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	data, err := ipfs.NewMFS(c, "/wagi/app")
	if err != nil {
		log.Fatal(err) // ipfs.ErrUnavailable, ipfs.ErrNotFile...
	}

	ctx := context.Background()
	r := wazero.NewRuntime(ctx)
	defer r.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, r)
	var wasm []byte // the guest module
	cfg := wazero.NewModuleConfig().
		WithArgs("guest", "write", "/data/x.txt").
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(data, "/data"))
	mod, err := r.InstantiateWithConfig(ctx, wasm, cfg)
	if mod != nil {
		mod.Close(ctx) // writes back the files the guest left open
	}
	if err != nil {
		log.Print(err)
	}
}
