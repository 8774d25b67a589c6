;; fresh.wat: prints what a fresh instance must see, then leaves traces that
;; a reused (not fresh) instance or memory would show on the next request:
;; a mutable global incremented, a data byte overwritten, a zero byte of the
;; initial memory set, and a byte set in a page it grows.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  ;; '?' at 33, 40, 47, 55 and 63; 65 bytes.
  (data (i32.const 0) "Content-Type: text/plain\n\nglobal=? data=? heap=? pages=? grown=?\n")
  (data (i32.const 200) "A")
  (func (export "_start")
    (local $old i32)
    (i32.store8 (i32.const 33) (i32.add (i32.const 48) (global.get $g)))
    (i32.store8 (i32.const 40) (i32.load8_u (i32.const 200)))
    (i32.store8 (i32.const 47) (i32.add (i32.const 48) (i32.load8_u (i32.const 32768))))
    (local.set $old (memory.grow (i32.const 1)))
    (i32.store8 (i32.const 55) (i32.add (i32.const 48) (local.get $old)))
    (i32.store8 (i32.const 63)
      (i32.add (i32.const 48)
        (i32.load8_u (i32.add (i32.mul (local.get $old) (i32.const 65536)) (i32.const 100)))))
    (i32.store (i32.const 256) (i32.const 0))
    (i32.store (i32.const 260) (i32.const 65))
    (drop (call $fd_write (i32.const 1) (i32.const 256) (i32.const 1) (i32.const 264)))
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (i32.store8 (i32.const 200) (i32.const 66))
    (i32.store8 (i32.const 32768) (i32.const 1))
    (i32.store8 (i32.add (i32.mul (local.get $old) (i32.const 65536)) (i32.const 100)) (i32.const 7))))
