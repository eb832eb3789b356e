//! Environment switches: `KILN_VK_DEVICE` and `KILN_VK_VALIDATION`. One test in its own binary, since it
//! changes the process environment.
mod common;

use common::*;
use kiln_vk::{Error, LoadOptions, Session};

#[test]
fn device_and_validation_come_from_the_environment() {
    let bytes = bundle_bytes();
    if load_or_skip(&bytes, &LoadOptions::default()).is_none() {
        return;
    }
    std::env::set_var("KILN_VK_DEVICE", "99");
    let e = Session::load(&bytes, &LoadOptions::default()).err().unwrap();
    assert!(matches!(e, Error::NoDevice(_)) && e.to_string().contains("KILN_VK_DEVICE=99"), "{e}");
    std::env::set_var("KILN_VK_DEVICE", "zero");
    assert!(matches!(Session::load(&bytes, &LoadOptions::default()), Err(Error::NoDevice(_))));
    std::env::set_var("KILN_VK_DEVICE", "0");
    let s = Session::load(&bytes, &LoadOptions::default()).unwrap();
    eprintln!("device 0: {}", s.device_name());
    drop(s);
    std::env::remove_var("KILN_VK_DEVICE");

    // Validation switched on by the environment alone: a broken kernel is reported.
    let bad = KERNEL.replace("struct PC { base: u32 }", "struct PC { base: u32, extra: u32 }");
    let bad = bundle_with(&compile(&bad));
    let s = Session::load(&bad, &LoadOptions::default()).unwrap();
    assert_eq!(s.validation_messages().0, 0, "validation is off by default");
    drop(s);
    std::env::set_var("KILN_VK_VALIDATION", "1");
    let s = Session::load(&bad, &LoadOptions::default()).unwrap();
    std::env::remove_var("KILN_VK_VALIDATION");
    assert!(s.validation_messages().0 > 0);
}
