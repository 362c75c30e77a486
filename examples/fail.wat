;; fail: a workflow that fails on purpose. It explains itself on stderr, then traps, the way a
;; Rust program's panic ends in `unreachable`. The runner reports the trap and keeps the stderr.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 16) "fail: giving up on purpose\n")  ;; 27 bytes

  (func (export "_start")
    ;; one iovec at 0 pointing at the message; bytes written land at 8
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 27))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))
