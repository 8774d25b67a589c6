;; loop: _start spins forever with no host calls (for CPU-time / deadline limit tests).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
