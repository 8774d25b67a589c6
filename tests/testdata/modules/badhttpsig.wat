;; badhttpsig: imports wasi_experimental_http.req with the wrong signature (one i32, not ten): a load error naming the import.
(module
  (import "wasi_experimental_http" "req" (func $req (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $req (i32.const 0)))))
