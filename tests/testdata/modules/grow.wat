;; grow: memory bomb: _start grows memory one page at a time until memory.grow fails, then traps.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (block $done
      (loop $more
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $more)))
    unreachable))
