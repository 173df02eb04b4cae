;; {{NAME}}: a filter SmartModule in WebAssembly text
;; (from `kolk smartmodule generate filter {{NAME}} --lang wat`).
;;
;; Keeps the records whose value is neither null nor empty. No parameters.
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

  ;; Input: record_count u32, flags u32, base_offset i64, first_timestamp i64, records.
  ;; Output: record_count u32, then the kept records copied as they are.
  (func (export "filter") (param $ptr i32) (param $len i32) (result i64)
    (local $count i32) (local $i i32) (local $r i32) (local $size i32)
    (local $out i32) (local $w i32) (local $kept i32)
    (local.set $count (i32.load (local.get $ptr)))
    (local.set $r (i32.add (local.get $ptr) (i32.const 24)))
    (local.set $out (call $alloc (local.get $len)))  ;; a filter's output is never larger than its input
    (if (i32.eqz (local.get $out)) (then (return (i64.const -2147483647))))  ;; no memory: an error of the batch
    (local.set $w (i32.add (local.get $out) (i32.const 4)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $size (i32.add (i32.load (local.get $r)) (i32.const 4)))
        (if (i32.gt_s (i32.load (call $value_length_at (local.get $r))) (i32.const 0))
          (then
            (memory.copy (local.get $w) (local.get $r) (local.get $size))
            (local.set $w (i32.add (local.get $w) (local.get $size)))
            (local.set $kept (i32.add (local.get $kept) (i32.const 1)))))
        (local.set $r (i32.add (local.get $r) (local.get $size)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (local.get $out) (local.get $kept))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $w) (local.get $out)))))
)
