package child

import (
	"context"
	"sort"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

func TestPreview0SeekTranslatesWhenceToPreview1(t *testing.T) {
	cases := []struct {
		name          string
		whence        uint64 // preview0
		wantWhence    uint64 // what preview1's fd_seek gets
		wantCalled    bool
		wantErrnoLeft uint64
	}{
		{"cur becomes preview1's cur", 0, 1, true, 0},
		{"end becomes preview1's end", 1, 2, true, 0},
		{"set becomes preview1's set", 2, 0, true, 0},
		{"an unknown whence is EINVAL without a call", 3, 0, false, errnoInval},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got uint64
			called := false
			orig := api.GoModuleFunc(func(_ context.Context, _ api.Module, stack []uint64) {
				called, got = true, stack[2]
				stack[0] = 0
			})
			stack := []uint64{3, 10, tc.whence, 64}
			seekWhence0(orig).Call(context.Background(), nil, stack)
			if called != tc.wantCalled || called && got != tc.wantWhence || !called && stack[0] != tc.wantErrnoLeft {
				t.Fatalf("called %v with whence %d, errno %d; want called %v with %d, errno %d",
					called, got, stack[0], tc.wantCalled, tc.wantWhence, tc.wantErrnoLeft)
			}
		})
	}
}

func TestPreview0ExportsTheSameABIFunctionsAndNoneOfTheRefused(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	if err := InstantiateHost(ctx, rt); err != nil {
		t.Fatal(err)
	}
	defs := rt.Module(Preview0ModuleName).ExportedFunctionDefinitions()
	var got []string
	for name := range defs {
		got = append(got, name)
	}
	sort.Strings(got)
	want := append(append([]string(nil), preview0Same...), "fd_seek")
	sort.Strings(want)
	if len(got) != len(want) {
		t.Fatalf("wasi_unstable exports %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("wasi_unstable exports %v, want %v", got, want)
		}
	}
	for name := range preview0Refused {
		if _, ok := defs[name]; ok {
			t.Errorf("%s is refused but exported", name)
		}
		if ImportRefusal(Preview0ModuleName, name) == "" {
			t.Errorf("%s has no refusal reason", name)
		}
	}
	// Preview1 is untouched: its filestat functions are still there.
	if _, ok := rt.Module("wasi_snapshot_preview1").ExportedFunctionDefinitions()["fd_filestat_get"]; !ok {
		t.Error("trimming wasi_unstable removed preview1's fd_filestat_get")
	}
}
