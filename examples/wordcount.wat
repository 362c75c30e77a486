;; wordcount: count the words of the input artifact named "text".
;;
;; p2pnode WASI runner contract: artifacts are preopened read-only at /in (fd 3), the output
;; directory read-write at /out (fd 4), the job input JSON is on stdin and the result JSON goes to
;; stdout. This workflow ignores its input, reads /in/text, prints {"words": N} and also writes N
;; to the output file /out/count.txt.
;;
;; A word is a maximal run of bytes above 0x20: space and ASCII control bytes separate words,
;; UTF-8 multibyte characters belong to words.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param i32) (result i32)))
  ;; path_open(dirfd, dirflags, path, path_len, oflags, rights_base, rights_inheriting, fdflags, *fd)
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  ;; Memory map (one 64 KiB page):
  ;;   0      one iovec {ptr, len}
  ;;   32     u32 bytes moved by fd_read / fd_write
  ;;   36     u32 fd returned by path_open
  ;;   64..   constant strings (below)
  ;;   256    decimal digits of N, written backwards so that they end at 288
  ;;   32768  read buffer, 32 KiB
  (memory (export "memory") 1)
  (data (i32.const 64) "text")                                     ;; 4 bytes
  (data (i32.const 80) "count.txt")                                ;; 9 bytes
  (data (i32.const 96) "{\"words\": ")                             ;; 10 bytes
  (data (i32.const 112) "}\n")                                     ;; 2 bytes
  (data (i32.const 128) "wordcount: cannot open /in/text\n")       ;; 32 bytes
  (data (i32.const 176) "wordcount: cannot create /out/count.txt\n") ;; 40 bytes
  (data (i32.const 224) "wordcount: cannot read /in/text\n")       ;; 32 bytes

  ;; Write one buffer to fd (the outputs are tiny: a short write is not retried).
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 32))))

  ;; Explain on stderr, then exit with status 1.
  (func $fail (param $msg i32) (param $len i32)
    (call $write (i32.const 2) (local.get $msg) (local.get $len))
    (call $proc_exit (i32.const 1)))

  ;; Count the words of the open file $fd, one 32 KiB chunk at a time.
  (func $count_words (param $fd i32) (result i32)
    (local $words i32) (local $in_word i32) (local $p i32) (local $end i32)
    (loop $next_chunk
      (i32.store (i32.const 0) (i32.const 32768))
      (i32.store (i32.const 4) (i32.const 32768))
      (if (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 32))
        (then (call $fail (i32.const 224) (i32.const 32))))
      (local.set $p (i32.const 32768))
      (local.set $end (i32.add (i32.const 32768) (i32.load (i32.const 32))))
      ;; an empty read means end of file
      (if (i32.lt_u (local.get $p) (local.get $end))
        (then
          (loop $next_byte
            (if (i32.gt_u (i32.load8_u (local.get $p)) (i32.const 32))
              (then
                ;; a word starts where a word byte follows a separator
                (if (i32.eqz (local.get $in_word))
                  (then (local.set $words (i32.add (local.get $words) (i32.const 1)))))
                (local.set $in_word (i32.const 1)))
              (else (local.set $in_word (i32.const 0))))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br_if $next_byte (i32.lt_u (local.get $p) (local.get $end))))
          (br $next_chunk))))
    (local.get $words))

  ;; Write n in decimal so that it ends at 288; returns where the digits start.
  (func $itoa (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 288))
    (loop $next_digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $next_digit (local.get $n)))
    (local.get $p))

  (func (export "_start")
    (local $fd i32) (local $digits i32) (local $ndigits i32)
    ;; open /in/text for reading (rights: fd_read = 1 << 1)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 4)
                         (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 36))
      (then (call $fail (i32.const 128) (i32.const 32))))
    (local.set $fd (i32.load (i32.const 36)))
    (local.set $digits (call $itoa (call $count_words (local.get $fd))))
    (local.set $ndigits (i32.sub (i32.const 288) (local.get $digits)))
    (drop (call $fd_close (local.get $fd)))

    ;; stdout: {"words": N}
    (call $write (i32.const 1) (i32.const 96) (i32.const 10))
    (call $write (i32.const 1) (local.get $digits) (local.get $ndigits))
    (call $write (i32.const 1) (i32.const 112) (i32.const 2))

    ;; /out/count.txt: N (oflags: creat = 1 | trunc = 8; rights: fd_write = 1 << 6)
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 80) (i32.const 9)
                         (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 36))
      (then (call $fail (i32.const 176) (i32.const 40))))
    (local.set $fd (i32.load (i32.const 36)))
    (call $write (local.get $fd) (local.get $digits) (local.get $ndigits))
    (drop (call $fd_close (local.get $fd)))))
