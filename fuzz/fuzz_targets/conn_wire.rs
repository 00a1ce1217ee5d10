//! cargo-fuzz target `conn_wire`: see rmb_fuzz_bodies::TARGETS and fuzz/README.md.
#![no_main]

#[global_allocator]
static COUNTING: rmb_fuzz_bodies::alloc::Counting = rmb_fuzz_bodies::alloc::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| rmb_fuzz_bodies::conn_wire(data));
