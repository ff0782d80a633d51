; `table.grow` on the module's function table, which Rust cannot express:
; there is no stable intrinsic for it. Compiled by build.rs (clang) and
; linked into the guest. Written for LLVM 14 (typed pointers); newer clangs
; read it too.
;
; hostile_table_grow(delta) grows `__indirect_function_table` by `delta`
; null entries and returns its old size, or -1 if the growth was refused.

%funcref = type i8 addrspace(20)*

@__indirect_function_table = external addrspace(1) global [0 x %funcref]

declare %funcref @llvm.wasm.ref.null.func() nounwind readonly
declare i32 @llvm.wasm.table.grow.funcref(i8 addrspace(1)*, %funcref, i32) nounwind

define i32 @hostile_table_grow(i32 %delta) {
  %null = call %funcref @llvm.wasm.ref.null.func()
  %table = bitcast [0 x %funcref] addrspace(1)* @__indirect_function_table to i8 addrspace(1)*
  %old = call i32 @llvm.wasm.table.grow.funcref(i8 addrspace(1)* %table, %funcref %null, i32 %delta)
  ret i32 %old
}
