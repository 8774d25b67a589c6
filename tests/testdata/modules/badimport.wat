;; badimport: imports env.missing_host_function, which no host provides (load error naming the import).
(module
  (import "env" "missing_host_function" (func $missing (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $missing (i32.const 0)))))
