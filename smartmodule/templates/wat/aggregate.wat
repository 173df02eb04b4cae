;; {{NAME}}: an aggregate SmartModule in WebAssembly text
;; (from `kolk smartmodule generate aggregate {{NAME}} --lang wat`).
;;
;; Counts records. The accumulator is the count as decimal text (empty: 0), kept by the host
;; from batch to batch; each output record is its input with the count so far as its value.
;; The host's parameter `initial` sets the starting accumulator (e.g. -p initial=100).
;;
;; Build and try it:
;;   kolk smartmodule build {{NAME}}.wat
;;   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
;; The ABI, byte by byte: docs/smartmodule-abi.md. The host's input is well-formed by that
;; ABI, so this module does not check it; what it hands back, the host checks.
(module
  (memory (export "memory") 1)
  (global $heap_base i32 (i32.const 1024))  ;; below: room for constant data
  (global $top (mut i32) (i32.const 1024))  ;; the arena's next free byte
  (global $error (mut i64) (i64.const 0))   ;; (address << 32) | length of a message, 0: none
  (data (i32.const 16) "the accumulator is not a decimal count (see the parameter `initial`)")
  (global $bad_acc i64 (i64.const 0x1000000044))  ;; the message above: address 16, 68 bytes

  (func (export "kolk_abi_version") (result i32) (i32.const 1))

  ;; Optional: the host reads a message here after an error code (docs/smartmodule-abi.md).
  (func (export "kolk_error") (result i64) (global.get $error))

  ;; The host calls kolk_alloc once before every call and writes that call's input there:
  ;; a bump arena, reset each time.
  (func (export "kolk_alloc") (param $size i32) (result i32)
    (global.set $error (i64.const 0))
    (global.set $top (global.get $heap_base))
    (call $alloc (local.get $size)))

  ;; $n bytes, 8-aligned, growing the memory when needed; 0 when it cannot grow.
  (func $alloc (param $n i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $n))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                                                    (i64.const 65535)) (i64.const 16))))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  ;; The address of a record's value length (after its key).
  (func $value_length_at (param $r i32) (result i32)
    (local $k i32)
    (local.set $k (i32.load offset=17 (local.get $r)))
    (i32.add (i32.add (local.get $r) (i32.const 21))
             (select (local.get $k) (i32.const 0) (i32.gt_s (local.get $k) (i32.const 0)))))


  ;; The decimal text of $v at $buf (20 bytes of room); its length.
  (func $format (param $v i64) (param $buf i32) (result i32)
    (local $p i32) (local $n i32)
    (local.set $p (i32.add (local.get $buf) (i32.const 20)))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.rem_u (local.get $v) (i64.const 10)) (i64.const 48)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.set $n (i32.sub (i32.add (local.get $buf) (i32.const 20)) (local.get $p)))
    (memory.copy (local.get $buf) (local.get $p) (local.get $n))
    (local.get $n))

  ;; Write at $w the record $r with the value ($v, $vlen); the position after it.
  (func $write_with_value (param $w i32) (param $r i32) (param $v i32) (param $vlen i32) (result i32)
    (local $head i32) (local $old i32) (local $tail i32) (local $tail_len i32) (local $len i32)
    (local.set $head (i32.sub (call $value_length_at (local.get $r)) (local.get $r)))  ;; length .. key
    (local.set $old (i32.load (i32.add (local.get $r) (local.get $head))))
    (local.set $tail (i32.add (i32.add (i32.add (local.get $r) (local.get $head)) (i32.const 4))
                              (select (local.get $old) (i32.const 0) (i32.gt_s (local.get $old) (i32.const 0)))))
    (local.set $tail_len (i32.sub (i32.add (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r)))
                                  (local.get $tail)))  ;; header_count and the headers
    (local.set $len (i32.add (i32.add (local.get $head) (local.get $vlen)) (local.get $tail_len)))
    (i32.store (local.get $w) (local.get $len))  ;; the length counts what follows it
    (memory.copy (i32.add (local.get $w) (i32.const 4)) (i32.add (local.get $r) (i32.const 4))
                 (i32.sub (local.get $head) (i32.const 4)))
    (i32.store (i32.add (local.get $w) (local.get $head)) (local.get $vlen))
    (memory.copy (i32.add (i32.add (local.get $w) (local.get $head)) (i32.const 4)) (local.get $v) (local.get $vlen))
    (memory.copy (i32.add (i32.add (i32.add (local.get $w) (local.get $head)) (i32.const 4)) (local.get $vlen))
                 (local.get $tail) (local.get $tail_len))
    (i32.add (i32.add (local.get $w) (i32.const 4)) (local.get $len)))

  ;; Input: record_count u32, flags u32, base_offset i64, first_timestamp i64,
  ;;        accumulator_length u32, accumulator, records.
  ;; Output: accumulator_length u32, accumulator, record_count u32, one record per input.
  (func (export "aggregate") (param $ptr i32) (param $len i32) (result i64)
    (local $count i32) (local $i i32) (local $r i32) (local $acc i32) (local $acc_len i32)
    (local $n i64) (local $c i32) (local $digits i32) (local $dlen i32) (local $records i32) (local $w i32)
    (local $out i32)
    (local.set $count (i32.load (local.get $ptr)))
    (local.set $acc_len (i32.load offset=24 (local.get $ptr)))
    (local.set $acc (i32.add (local.get $ptr) (i32.const 28)))
    (local.set $r (i32.add (local.get $acc) (local.get $acc_len)))
    ;; the count so far: decimal digits, at most 18 of them (empty: 0)
    (if (i32.gt_u (local.get $acc_len) (i32.const 18))
      (then (global.set $error (global.get $bad_acc)) (return (i64.const -2147483648))))
    (block $parsed
      (loop $digit
        (br_if $parsed (i32.ge_u (local.get $i) (local.get $acc_len)))
        (local.set $c (i32.sub (i32.load8_u (i32.add (local.get $acc) (local.get $i))) (i32.const 48)))
        (if (i32.gt_u (local.get $c) (i32.const 9))
          (then (global.set $error (global.get $bad_acc)) (return (i64.const -2147483648))))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digit)))
    ;; Room: each output record is its input plus at most 20 value bytes; the accumulator
    ;; (at most 20 digits) and the counts go before the records, placed once its length is known.
    (local.set $digits (call $alloc (i32.const 24)))
    (local.set $out (call $alloc (i32.add (i32.add (local.get $len) (i32.const 32))
                                          (i32.mul (local.get $count) (i32.const 20)))))
    (if (i32.or (i32.eqz (local.get $digits)) (i32.eqz (local.get $out)))
      (then (return (i64.const -2147483647))))  ;; no memory: an error of the batch
    (local.set $records (i32.add (local.get $out) (i32.const 28)))
    (local.set $w (local.get $records))
    (local.set $i (i32.const 0))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $n (i64.add (local.get $n) (i64.const 1)))
        (local.set $dlen (call $format (local.get $n) (local.get $digits)))
        (local.set $w (call $write_with_value (local.get $w) (local.get $r) (local.get $digits) (local.get $dlen)))
        (local.set $r (i32.add (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; accumulator_length, accumulator, record_count, right before the records
    (local.set $dlen (call $format (local.get $n) (local.get $digits)))
    (local.set $out (i32.sub (i32.sub (local.get $records) (i32.const 8)) (local.get $dlen)))
    (i32.store (local.get $out) (local.get $dlen))
    (memory.copy (i32.add (local.get $out) (i32.const 4)) (local.get $digits) (local.get $dlen))
    (i32.store (i32.sub (local.get $records) (i32.const 4)) (local.get $count))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $w) (local.get $out)))))
)
