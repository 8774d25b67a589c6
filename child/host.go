package child

import (
	"github.com/tetratelabs/wazero/api"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmhost"
)

// hostImpl are the child's implementations of the host functions wasmhost
// declares (names and types are there, shared with the compile process):
// the request's environment (environ.go) and outbound HTTP (http.go), both
// read from the call's context.
var hostImpl = wasmhost.Impl{
	Environ: map[string]api.GoModuleFunction{
		"environ_sizes_get": api.GoModuleFunc(environSizesGet),
		"environ_get":       api.GoModuleFunc(environGet),
	},
	HTTP: map[string]api.GoModuleFunction{
		"req":             api.GoModuleFunc(httpReq),
		"close":           api.GoModuleFunc(httpClose),
		"header_get":      api.GoModuleFunc(httpHeaderGet),
		"headers_get_all": api.GoModuleFunc(httpHeadersGetAll),
		"body_read":       api.GoModuleFunc(httpBodyRead),
	},
}
