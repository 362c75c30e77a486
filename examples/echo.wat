;; echo: copies stdin to stdout, so the result is the job input itself. Handy to measure the
;; runner's own overhead (instantiation, I/O plumbing, JSON) with no real work in the way.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  ;; Memory map: 0 one iovec {ptr, len}; 8 u32 bytes moved; 1024.. buffer (63 KiB)
  (memory (export "memory") 1)

  (func (export "_start")
    (local $errno i32) (local $n i32)
    (loop $copy
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 64512))
      (local.set $errno (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
      (local.set $n (i32.load (i32.const 8)))
      ;; an empty read means end of input
      (if (local.get $n)
        (then
          ;; write what was read (stdout is captured in full: no short writes)
          (i32.store (i32.const 4) (local.get $n))
          (local.set $errno (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
          (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
          (br $copy))))))
