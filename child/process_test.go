package child

import "testing"

func TestHeapLimit(t *testing.T) {
	cases := []struct {
		name             string
		addressSpace, vm uint64
		want             int64
	}{
		{"the heap gets what the limit leaves over the mapped space and the non-heap reserve", 3 << 30, 1 << 30, 2<<30 - nonHeapReserve},
		{"a limit at or under the mapped space leaves the heap a floor", 1 << 30, 2 << 30, 64 << 20},
		{"a limit just over the mapped space leaves the floor too", 1<<30 + nonHeapReserve, 1 << 30, 64 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := heapLimit(tc.addressSpace, tc.vm); got != tc.want {
				t.Fatalf("heapLimit(%d, %d) = %d, want %d", tc.addressSpace, tc.vm, got, tc.want)
			}
		})
	}
}

func TestVMSizeReadsThisProcess(t *testing.T) {
	if vm := vmSize(); vm < 1<<20 {
		t.Fatalf("vmSize() = %d", vm)
	}
}
