;; command: an ordinary WASI program (command mode), no JSON anywhere.
;;
;; Prints its argv and then its environment on stdout, one entry per line, then copies stdin to
;; stdout; writes "partial" to /tmp/scratch.txt (fd 5) and to /out/sub/f.txt (fd 4), and "done"
;; to stderr. Exits with the digit argv[1] starts with (0 without argv[1]); 9 or 8 when it cannot
;; write /tmp or /out.
;;
;;   p2pnode job submit --module examples/command.wat --env GREETING=hello --stdin README.md \
;;     --wait -- 0 hi
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $mkdir (param i32 i32 i32) (result i32)))
  ;; path_open(dirfd, dirflags, path, path_len, oflags, rights_base, rights_inheriting, fdflags, *fd)
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; 0: iovec, 8: bytes written, 16: opened fd, 32/40: argv/environ sizes, 48: read iovec,
  ;; 56: bytes read; argv at 8192 (strings at 16384), environ at 24576 (strings at 32768),
  ;; the stdin buffer at 65536.
  (memory (export "memory") 2)
  (data (i32.const 1024) "sub")
  (data (i32.const 1040) "sub/f.txt")
  (data (i32.const 1056) "partial\n")
  (data (i32.const 1072) "scratch.txt")
  (data (i32.const 1088) "done\n")
  (data (i32.const 1104) "\n")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; print the NUL-terminated strings of a pointer array, one per line
  (func $lines (param $ptrs i32) (param $count i32) (local $i i32) (local $s i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $s (i32.load (i32.add (local.get $ptrs) (i32.shl (local.get $i) (i32.const 2)))))
        (call $write (i32.const 1) (local.get $s) (call $strlen (local.get $s)))
        (call $write (i32.const 1) (i32.const 1104) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))

  ;; create (or truncate) a file under a preopened folder and write bytes to it; the errno
  (func $put (param $dir i32) (param $path i32) (param $path_len i32) (param $data i32)
    (param $len i32) (result i32) (local $err i32)
    ;; oflags creat|trunc, rights fd_write
    (local.set $err
      (call $path_open (local.get $dir) (i32.const 0) (local.get $path) (local.get $path_len)
        (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
    (if (local.get $err) (then (return (local.get $err))))
    (call $write (i32.load (i32.const 16)) (local.get $data) (local.get $len))
    (drop (call $fd_close (i32.load (i32.const 16))))
    (i32.const 0))

  (func (export "_start") (local $argc i32) (local $n i32)
    (drop (call $args_sizes_get (i32.const 32) (i32.const 36)))
    (local.set $argc (i32.load (i32.const 32)))
    (drop (call $args_get (i32.const 8192) (i32.const 16384)))
    (call $lines (i32.const 8192) (local.get $argc))
    (drop (call $environ_sizes_get (i32.const 40) (i32.const 44)))
    (drop (call $environ_get (i32.const 24576) (i32.const 32768)))
    (call $lines (i32.const 24576) (i32.load (i32.const 40)))
    (block $eof
      (loop $more
        (i32.store (i32.const 48) (i32.const 65536))
        (i32.store (i32.const 52) (i32.const 4096))
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 56)))
        (local.set $n (i32.load (i32.const 56)))
        (br_if $eof (i32.eqz (local.get $n)))
        (call $write (i32.const 1) (i32.const 65536) (local.get $n))
        (br $more)))
    (if (call $put (i32.const 5) (i32.const 1072) (i32.const 11) (i32.const 1056) (i32.const 8))
      (then (call $proc_exit (i32.const 9))))
    (drop (call $mkdir (i32.const 4) (i32.const 1024) (i32.const 3)))
    (if (call $put (i32.const 4) (i32.const 1040) (i32.const 9) (i32.const 1056) (i32.const 8))
      (then (call $proc_exit (i32.const 8))))
    (call $write (i32.const 2) (i32.const 1088) (i32.const 5))
    (if (i32.ge_u (local.get $argc) (i32.const 2))
      (then
        (call $proc_exit (i32.sub (i32.load8_u (i32.load (i32.const 8196))) (i32.const 48)))))))
