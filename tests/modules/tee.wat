;; tee: copies stdin to stdout and to /out/input.json, so the result is the job input itself
;; and the same bytes come back as an output file. For tests of large inputs and results.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  ;; Memory map: 0 one iovec {ptr, len}; 8 u32 bytes moved; 12 u32 output fd;
  ;; 16 "input.json"; 1024.. buffer (63 KiB)
  (memory (export "memory") 1)
  (data (i32.const 16) "input.json")

  (func $check (param $errno i32)
    (if (local.get $errno) (then (call $proc_exit (local.get $errno)))))

  ;; Write the n bytes at 1024 to fd (one write: the runner's stdout and files take it whole).
  (func $write (param $fd i32) (param $n i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $n))
    (call $check (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (local $n i32) (local $out i32)
    ;; /out/input.json (oflags: creat = 1 | trunc = 8; rights: fd_write = 1 << 6)
    (call $check (call $path_open (i32.const 4) (i32.const 0) (i32.const 16) (i32.const 10)
                                  (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 12)))
    (local.set $out (i32.load (i32.const 12)))
    (loop $copy
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 64512))
      (call $check (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      ;; an empty read means end of input
      (if (local.get $n)
        (then
          (call $write (i32.const 1) (local.get $n))
          (call $write (local.get $out) (local.get $n))
          (br $copy))))))
