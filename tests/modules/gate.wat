;; gate: a command that runs until the file /in/release exists (checked every 50 ms, sleeping in
;; poll_oneoff in between), then exits 0. A job that stays "running" exactly as long as a test
;; wants: the test creates `release` in the worker's artifacts folder for the job.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "release")
  (func (export "_start")
    (loop $wait
      ;; path_open(fd 3 = /in, no dirflags, "release", no oflags, rights fd_read, 0, 0, fd out at 8)
      (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7)
                           (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))
        (then
          ;; one monotonic-clock subscription at 64 (userdata, tag, clock id, 50 ms), event at 128
          (i64.store (i32.const 64) (i64.const 1))
          (i32.store8 (i32.const 72) (i32.const 0))
          (i32.store (i32.const 80) (i32.const 1))
          (i64.store (i32.const 88) (i64.const 50000000))
          (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 200)))
          (br $wait))))))
