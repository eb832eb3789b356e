//! The C API (`include/kiln_vk.h`): an opaque session handle over [`Session`]. Every function catches
//! panics, checks its pointers, and on failure stores a message for `kiln_vk_last_error` on this thread.
//! Validation follows the environment (`KILN_VK_VALIDATION=1`).
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_double, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::bundle::Tensor;
use crate::session::{LoadOptions, Session};

/// Tensor description handed to C; the pointers live as long as the session.
#[repr(C)]
pub struct kiln_vk_tensor_info {
    pub name: *const c_char,
    pub dtype: *const c_char,
    pub rank: usize,
    pub shape: *const u64,
    pub elements: usize,
}

/// A tensor's C strings and shape, kept alive by the session handle.
struct Info {
    name: CString,
    dtype: CString,
    shape: Vec<u64>,
    elements: usize,
}

impl Info {
    fn new(t: &Tensor) -> Info {
        let c = |s: &str| CString::new(s.replace('\0', "?")).unwrap_or_default();
        Info {
            name: c(&t.name),
            dtype: c(&t.dtype),
            shape: t.shape.clone(),
            elements: t.elements().and_then(|n| usize::try_from(n).ok()).unwrap_or(usize::MAX),
        }
    }

    fn write(&self, out: &mut kiln_vk_tensor_info) {
        *out = kiln_vk_tensor_info {
            name: self.name.as_ptr(),
            dtype: self.dtype.as_ptr(),
            rank: self.shape.len(),
            shape: self.shape.as_ptr(),
            elements: self.elements,
        };
    }
}

/// The opaque handle behind `kiln_vk_session*`.
pub struct kiln_vk_session {
    session: Session,
    inputs: Vec<Info>,
    outputs: Vec<Info>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "?")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Run `f`, turning an error or a panic into `fail` plus a thread-local message.
fn guard<T>(func: &str, fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => {
            set_error(&format!("{func}: {msg}"));
            fail
        }
        Err(_) => {
            set_error(&format!("{func}: internal error (panic); please report it"));
            fail
        }
    }
}

/// # Safety
/// `s` is null or a live session from `kiln_vk_create*`.
unsafe fn session_ref<'a>(s: *const kiln_vk_session) -> Result<&'a kiln_vk_session, String> {
    // SAFETY: per the function's contract.
    unsafe { s.as_ref() }.ok_or_else(|| "session is NULL".to_owned())
}

/// # Safety
/// `s` is null or a live session from `kiln_vk_create*`, not used concurrently.
unsafe fn session_mut<'a>(s: *mut kiln_vk_session) -> Result<&'a mut kiln_vk_session, String> {
    // SAFETY: per the function's contract.
    unsafe { s.as_mut() }.ok_or_else(|| "session is NULL".to_owned())
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn path_arg(p: *const c_char, what: &str) -> Result<Option<PathBuf>, String> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: per the function's contract.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    #[cfg(unix)]
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
    #[cfg(not(unix))]
    let path =
        PathBuf::from(std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))?);
    if path.as_os_str().is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(Some(path))
}

fn wrap(session: Session) -> *mut kiln_vk_session {
    let inputs = session.inputs().iter().map(Info::new).collect();
    let outputs = session.outputs().iter().map(Info::new).collect();
    Box::into_raw(Box::new(kiln_vk_session { session, inputs, outputs }))
}

fn options(cache: Option<PathBuf>) -> LoadOptions {
    LoadOptions { pipeline_cache: cache, validation: false }
}

/// Load a bundle file. NULL on error (see `kiln_vk_last_error`).
///
/// # Safety
/// `bundle_path` is a NUL-terminated string; `pipeline_cache_path` is NULL or one.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_create(
    bundle_path: *const c_char,
    pipeline_cache_path: *const c_char,
) -> *mut kiln_vk_session {
    guard("kiln_vk_create", std::ptr::null_mut(), || {
        // SAFETY: per the function's contract.
        let path = unsafe { path_arg(bundle_path, "bundle_path") }?.ok_or("bundle_path is NULL")?;
        let cache = unsafe { path_arg(pipeline_cache_path, "pipeline_cache_path") }?;
        Session::load_file(path, &options(cache)).map(wrap).map_err(|e| e.to_string())
    })
}

/// Load a bundle from memory (copied as needed; `bytes` may be freed after the call). NULL on error.
///
/// # Safety
/// `bytes` points to `len` readable bytes; `pipeline_cache_path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_create_from_memory(
    bytes: *const c_void,
    len: usize,
    pipeline_cache_path: *const c_char,
) -> *mut kiln_vk_session {
    guard("kiln_vk_create_from_memory", std::ptr::null_mut(), || {
        if bytes.is_null() {
            return Err("bytes is NULL".into());
        }
        // SAFETY: per the function's contract.
        let data = unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) };
        let cache = unsafe { path_arg(pipeline_cache_path, "pipeline_cache_path") }?;
        Session::load(data, &options(cache)).map(wrap).map_err(|e| e.to_string())
    })
}

/// Destroy a session (NULL is a no-op).
///
/// # Safety
/// `s` is NULL or a live session, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_destroy(s: *mut kiln_vk_session) {
    guard("kiln_vk_destroy", (), || {
        if !s.is_null() {
            // SAFETY: created by `Box::into_raw` in `wrap`; ownership returns here once.
            drop(unsafe { Box::from_raw(s) });
        }
        Ok(())
    })
}

/// Number of model inputs (0 and an error for NULL).
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_input_count(s: *const kiln_vk_session) -> usize {
    guard("kiln_vk_input_count", 0, || Ok(unsafe { session_ref(s) }?.inputs.len()))
}

/// Number of model outputs (0 and an error for NULL).
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_output_count(s: *const kiln_vk_session) -> usize {
    guard("kiln_vk_output_count", 0, || Ok(unsafe { session_ref(s) }?.outputs.len()))
}

fn info(
    list: &[Info],
    kind: &str,
    index: usize,
    out: *mut kiln_vk_tensor_info,
) -> Result<c_int, String> {
    // SAFETY: the caller passes NULL or a writable struct.
    let out = unsafe { out.as_mut() }.ok_or("out is NULL")?;
    let i = list
        .get(index)
        .ok_or_else(|| format!("{kind} index {index} out of range (count {})", list.len()))?;
    i.write(out);
    Ok(0)
}

/// Describe input `index`. 0 ok, -1 error.
///
/// # Safety
/// `s` is NULL or a live session; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_input_info(
    s: *const kiln_vk_session,
    index: usize,
    out: *mut kiln_vk_tensor_info,
) -> c_int {
    guard("kiln_vk_input_info", -1, || {
        info(&unsafe { session_ref(s) }?.inputs, "input", index, out)
    })
}

/// Describe output `index`. 0 ok, -1 error.
///
/// # Safety
/// `s` is NULL or a live session; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_output_info(
    s: *const kiln_vk_session,
    index: usize,
    out: *mut kiln_vk_tensor_info,
) -> c_int {
    guard("kiln_vk_output_info", -1, || {
        info(&unsafe { session_ref(s) }?.outputs, "output", index, out)
    })
}

/// Set input `index` from `count` floats (exactly its element count). 0 ok, -1 error.
///
/// # Safety
/// `s` is NULL or a live session; `data` points to `count` floats (may be NULL when `count` is 0).
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_set_input(
    s: *mut kiln_vk_session,
    index: usize,
    data: *const f32,
    count: usize,
) -> c_int {
    guard("kiln_vk_set_input", -1, || {
        let s = unsafe { session_mut(s) }?;
        let values = match (data.is_null(), count) {
            (_, 0) => &[][..],
            (true, _) => return Err("data is NULL".into()),
            // SAFETY: per the function's contract.
            (false, n) => unsafe { std::slice::from_raw_parts(data, n) },
        };
        s.session.set_input(index, values).map(|()| 0).map_err(|e| e.to_string())
    })
}

/// Run the model. 0 ok, -1 error.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_run(s: *mut kiln_vk_session) -> c_int {
    guard("kiln_vk_run", -1, || {
        let s = unsafe { session_mut(s) }?;
        s.session.run().map(|()| 0).map_err(|e| e.to_string())
    })
}

/// Copy output `index` into `out` (`count` = its element count). 0 ok, -1 error.
///
/// # Safety
/// `s` is NULL or a live session; `out` points to `count` writable floats (may be NULL when `count` is 0).
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_get_output(
    s: *const kiln_vk_session,
    index: usize,
    out: *mut f32,
    count: usize,
) -> c_int {
    guard("kiln_vk_get_output", -1, || {
        let s = unsafe { session_ref(s) }?;
        let dst = match (out.is_null(), count) {
            (_, 0) => &mut [][..],
            (true, _) => return Err("out is NULL".into()),
            // SAFETY: per the function's contract.
            (false, n) => unsafe { std::slice::from_raw_parts_mut(out, n) },
        };
        s.session.output_into(index, dst).map(|()| 0).map_err(|e| e.to_string())
    })
}

/// Milliseconds of the first run; -1 before the first run or for NULL.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_first_run_ms(s: *const kiln_vk_session) -> c_double {
    guard("kiln_vk_first_run_ms", -1.0, || {
        Ok(unsafe { session_ref(s) }?.session.first_run_ms().unwrap_or(-1.0))
    })
}

/// Milliseconds the load took; -1 for NULL.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn kiln_vk_load_ms(s: *const kiln_vk_session) -> c_double {
    guard("kiln_vk_load_ms", -1.0, || Ok(unsafe { session_ref(s) }?.session.load_ms()))
}

/// The message of the last failed call on this thread, "" if none. Valid until the next failing call on
/// this thread.
#[no_mangle]
pub extern "C" fn kiln_vk_last_error() -> *const c_char {
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}
