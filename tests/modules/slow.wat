;; slow: counts down a large number, then prints {"done":1}. A job that stays "running" long
;; enough for a test to kill its worker mid-run.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"done\":1}")
  (func (export "_start")
    (local $n i64)
    (local.set $n (i64.const 6000000000))
    (loop $count
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $count (i64.ne (local.get $n) (i64.const 0))))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
