;; badroutes: _routes prints a malformed line ("nonsense\n"), so loading the module must fail.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "nonsense\n")                                  ;; 64, len 9
  (data (i32.const 128) "Content-Type: text/plain\n\nbadroutes\n")   ;; 128, len 36
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_routes") (call $print (i32.const 64) (i32.const 9)))
  (func (export "_start") (call $print (i32.const 128) (i32.const 36))))
