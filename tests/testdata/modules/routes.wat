;; routes: exports _routes (/a -> a_handler, /b/... -> b_handler), the handlers, _start ("parent") and "other".
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec {ptr, len}; 8: nwritten; texts from 64
  (data (i32.const 64) "/a a_handler\n/b/... b_handler\n")          ;; 64, len 30
  (data (i32.const 128) "Content-Type: text/plain\n\n")              ;; 128, len 26
  (data (i32.const 160) "a\n")                                        ;; 160, len 2
  (data (i32.const 164) "b\n")                                        ;; 164, len 2
  (data (i32.const 168) "parent\n")                                   ;; 168, len 7
  (data (i32.const 176) "other entrypoint\n")                         ;; 176, len 17

  ;; print writes len bytes at ptr to stdout.
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; respond writes the text/plain header and then the body at ptr.
  (func $respond (param $ptr i32) (param $len i32)
    (call $print (i32.const 128) (i32.const 26))
    (call $print (local.get $ptr) (local.get $len)))

  (func (export "_routes") (call $print (i32.const 64) (i32.const 30)))
  (func (export "a_handler") (call $respond (i32.const 160) (i32.const 2)))
  (func (export "b_handler") (call $respond (i32.const 164) (i32.const 2)))
  (func (export "_start") (call $respond (i32.const 168) (i32.const 7)))
  (func (export "other") (call $respond (i32.const 176) (i32.const 17))))
