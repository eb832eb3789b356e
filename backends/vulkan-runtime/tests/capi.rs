//! The C API driven from Rust through its `extern "C"` functions.
mod common;

use std::ffi::{CStr, CString};

use common::*;
use kiln_vk::capi::*;

fn last_error() -> String {
    // SAFETY: always a valid NUL-terminated string.
    unsafe { CStr::from_ptr(kiln_vk_last_error()) }.to_string_lossy().into_owned()
}

fn info() -> kiln_vk_tensor_info {
    kiln_vk_tensor_info {
        name: std::ptr::null(),
        dtype: std::ptr::null(),
        rank: 0,
        shape: std::ptr::null(),
        elements: 0,
    }
}

#[test]
fn c_api_round_trip() {
    let bytes = bundle_bytes();
    // Skip the same way the Rust tests do.
    if load_or_skip(&bytes, &kiln_vk::LoadOptions::default()).is_none() {
        return;
    }
    unsafe {
        let s = kiln_vk_create_from_memory(bytes.as_ptr().cast(), bytes.len(), std::ptr::null());
        assert!(!s.is_null(), "{}", last_error());
        assert_eq!(kiln_vk_input_count(s), 1);
        assert_eq!(kiln_vk_output_count(s), 1);
        let mut i = info();
        assert_eq!(kiln_vk_input_info(s, 0, &mut i), 0);
        assert_eq!(CStr::from_ptr(i.name).to_str().unwrap(), "x");
        assert_eq!(CStr::from_ptr(i.dtype).to_str().unwrap(), "float32");
        assert_eq!(std::slice::from_raw_parts(i.shape, i.rank), &[1, N as u64]);
        assert_eq!(i.elements, N);
        let mut o = info();
        assert_eq!(kiln_vk_output_info(s, 0, &mut o), 0);
        assert_eq!(CStr::from_ptr(o.name).to_str().unwrap(), "y");
        assert_eq!(kiln_vk_output_info(s, 1, &mut o), -1);
        assert!(last_error().contains("out of range"), "{}", last_error());
        assert_eq!(kiln_vk_input_info(s, 0, std::ptr::null_mut()), -1);

        assert!(kiln_vk_first_run_ms(s) < 0.0);
        assert!(kiln_vk_load_ms(s) > 0.0);
        let x = input(2.0);
        assert_eq!(kiln_vk_set_input(s, 0, x.as_ptr(), x.len()), 0);
        assert_eq!(kiln_vk_set_input(s, 0, x.as_ptr(), 3), -1);
        assert!(last_error().contains("kiln_vk_set_input"), "{}", last_error());
        assert_eq!(kiln_vk_run(s), 0, "{}", last_error());
        assert!(kiln_vk_first_run_ms(s) >= 0.0);
        let mut y = vec![0.0f32; N];
        assert_eq!(kiln_vk_get_output(s, 0, y.as_mut_ptr(), y.len()), 0);
        assert_eq!(y, expected(&x));
        assert_eq!(kiln_vk_get_output(s, 0, std::ptr::null_mut(), N), -1);
        kiln_vk_destroy(s);
    }
}

#[test]
fn c_api_errors() {
    unsafe {
        let path = CString::new("/nonexistent/model.kvk").unwrap();
        let s = kiln_vk_create(path.as_ptr(), std::ptr::null());
        assert!(s.is_null());
        let e = last_error();
        assert!(e.contains("kiln_vk_create") && e.contains("/nonexistent/model.kvk"), "{e}");
        assert!(kiln_vk_create(std::ptr::null(), std::ptr::null()).is_null());
        assert!(last_error().contains("bundle_path is NULL"));
        assert!(kiln_vk_create_from_memory(b"junk".as_ptr().cast(), 4, std::ptr::null()).is_null());
        assert!(last_error().contains("magic"), "{}", last_error());
        assert_eq!(kiln_vk_run(std::ptr::null_mut()), -1);
        assert!(last_error().contains("NULL"));
        assert_eq!(kiln_vk_input_count(std::ptr::null()), 0);
        kiln_vk_destroy(std::ptr::null_mut());
    }
}
