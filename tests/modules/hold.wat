;; hold: prints a line to stdout and one to stderr, then waits, looking every 10 ms, until a file
;; named "release" appears in its /tmp, and exits 0. A command job a test can watch while it runs
;; and then let finish when it chooses, with no timing involved.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "hello from the guest\n")
  (data (i32.const 1056) "waiting for release\n")
  (data (i32.const 1088) "release")
  ;; write(fd, ptr, len) with the iovec at 0 and the byte count at 8
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 1024) (i32.const 21))
    (call $write (i32.const 2) (i32.const 1056) (i32.const 20))
    ;; one relative monotonic clock subscription of 10 ms at 64
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 10000000))
    (block $released
      (loop $wait
        (br_if $released
          (i32.eqz (call $path_open (i32.const 5) (i32.const 0) (i32.const 1088) (i32.const 7)
            (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0)
            (i32.const 16))))
        (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 200)))
        (br $wait)))))
