//! `run`, `set_input` and `output_into` must not touch the heap after the first run: a counting global
//! allocator checks it on this test's thread.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use kiln_vk::LoadOptions;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_runs_do_not_allocate() {
    let bytes = bundle_bytes();
    let Some(mut s) = load_or_skip(&bytes, &LoadOptions::default()) else { return };
    let x = input(1.0);
    let want = expected(&x);
    let mut out = vec![0.0f32; N];
    s.set_input(0, &x).unwrap();
    s.run().unwrap();
    COUNTING.with(|c| c.set(true));
    for _ in 0..20 {
        s.set_input(0, &x).unwrap();
        s.run().unwrap();
        s.output_into(0, &mut out).unwrap();
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "heap allocations during steady-state runs");
    assert_eq!(out, want);
}
