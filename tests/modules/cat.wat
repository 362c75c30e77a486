;; cat FD PATH: copies the file PATH of the preopened folder FD (one digit) to stdout, then tries
;; to create a file there: exits 2 when PATH cannot be opened, 7 when the folder is writable.
(module
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; argv pointers at 256, strings at 1024, the copy buffer at 8192
  (memory (export "memory") 1)
  (data (i32.const 128) "written")

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func (export "_start") (local $dir i32) (local $path i32) (local $fd i32) (local $n i32)
    (drop (call $args_get (i32.const 256) (i32.const 1024)))
    (local.set $dir (i32.sub (i32.load8_u (i32.load (i32.const 260))) (i32.const 48)))
    (local.set $path (i32.load (i32.const 264)))
    (if (call $path_open (local.get $dir) (i32.const 0) (local.get $path)
          (call $strlen (local.get $path)) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0)
          (i32.const 16))
      (then (call $proc_exit (i32.const 2))))
    (local.set $fd (i32.load (i32.const 16)))
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.const 8192))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $eof (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (i32.store (i32.const 4) (local.get $n))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br $more)))
    (if (i32.eqz (call $path_open (local.get $dir) (i32.const 0) (i32.const 128) (i32.const 7)
          (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
      (then (call $proc_exit (i32.const 7))))))
