//! Raw Envoy 1.40 dynamic-module ABI (`v0.2.0`): the `#[repr(C)]` types and the callbacks this
//! module imports. Only callbacks that the Envoy 1.40.0 binary exports may be declared here:
//! rustc emits GLOB_DAT relocations, so a single missing symbol makes `dlopen` fail
//! (see `tests/gateway` for the check against the real binary's dynamic symbol table).
//!
//! Nothing outside `ffi` and `hooks` touches this module.

use std::ffi::{c_char, c_void};

/// The ABI version string Envoy 1.40 logs as matched (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// A buffer owned by Envoy, valid until the current hook returns or a setter is called.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const fn empty() -> Self {
        EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

/// A buffer owned by the module; Envoy copies what it needs before the callback returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub const fn null() -> Self {
        ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        ModuleBuffer {
            ptr: b.as_ptr().cast(),
            length: b.len(),
        }
    }
}

/// A header owned by the module (used for local replies).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// A header owned by Envoy (valid until the hook returns or a header setter is called).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

impl EnvoyHttpHeader {
    pub const fn empty() -> Self {
        EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        }
    }
}

/// A string key/value pair owned by the module (metadata batches).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleKeyValue {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const HEADER_TYPE_REQUEST: i32 = 0;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
pub const HEADERS_STATUS_CONTINUE: i32 = 0;
pub const HEADERS_STATUS_STOP_ITERATION: i32 = 1;
/// Body, trailers and local-reply statuses: `Continue` is 0 for all of them.
pub const STATUS_CONTINUE: i32 = 0;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: i32 = 0;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_TRACE: i32 = 0;
pub const LOG_DEBUG: i32 = 1;
pub const LOG_INFO: i32 = 2;
pub const LOG_WARN: i32 = 3;
pub const LOG_ERROR: i32 = 4;

/// Opaque Envoy pointers.
pub type FilterEnvoyPtr = *mut c_void;
pub type ConfigEnvoyPtr = *mut c_void;

// SAFETY (declaration block): every signature below follows `abi.h` at ABI `v0.2.0`, and each
// symbol is exported by the Envoy 1.40.0 binary (tests/gateway/tests/module.rs compares the
// module's undefined symbols with the binary's exports).
unsafe extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: i32) -> bool;
    pub fn envoy_dynamic_module_callback_is_validation_mode() -> bool;

    /// A scheduler that runs `on_http_filter_config_scheduled` on the main thread; `commit` may
    /// be called from any thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: *mut c_void,
    );

    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: i32,
    ) -> usize;

    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: i32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: i32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *const ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        entries: *const ModuleKeyValue,
        entries_length: usize,
    );

    pub fn envoy_dynamic_module_callback_http_get_cluster_name(
        filter: FilterEnvoyPtr,
        result: *mut EnvoyBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> i32;
}

/// Stand-ins for Envoy's exports so the crate's own unit-test binary links (the real symbols
/// come from the Envoy executable at load time). They do nothing and are never part of the
/// shipped module.
#[cfg(test)]
mod test_stubs {
    use super::*;

    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_log(_: i32, _: ModuleBuffer) {}
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_log_enabled(_: i32) -> bool {
        false
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_is_validation_mode() -> bool {
        false
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        _: ConfigEnvoyPtr,
    ) -> *mut c_void {
        std::ptr::null_mut()
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        _: *mut c_void,
        _: u64,
    ) {
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        _: *mut c_void,
    ) {
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
        _: FilterEnvoyPtr,
        _: i32,
    ) -> usize {
        0
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_get_headers(
        _: FilterEnvoyPtr,
        _: i32,
        _: *mut EnvoyHttpHeader,
    ) -> bool {
        false
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_set_header(
        _: FilterEnvoyPtr,
        _: i32,
        _: ModuleBuffer,
        _: ModuleBuffer,
    ) -> bool {
        false
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_send_response(
        _: FilterEnvoyPtr,
        _: u32,
        _: *const ModuleHttpHeader,
        _: usize,
        _: ModuleBuffer,
        _: ModuleBuffer,
    ) {
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        _: FilterEnvoyPtr,
        _: ModuleBuffer,
        _: *const ModuleKeyValue,
        _: usize,
    ) {
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_get_cluster_name(
        _: FilterEnvoyPtr,
        _: *mut EnvoyBuffer,
    ) -> bool {
        false
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        _: ConfigEnvoyPtr,
        _: ModuleBuffer,
        _: *const ModuleBuffer,
        _: usize,
        _: *mut usize,
    ) -> i32 {
        1
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        _: ConfigEnvoyPtr,
        _: ModuleBuffer,
        _: *const ModuleBuffer,
        _: usize,
        _: *mut usize,
    ) -> i32 {
        1
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
        _: FilterEnvoyPtr,
        _: usize,
        _: *const ModuleBuffer,
        _: usize,
        _: u64,
    ) -> i32 {
        1
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        _: ConfigEnvoyPtr,
        _: usize,
        _: *const ModuleBuffer,
        _: usize,
        _: u64,
    ) -> i32 {
        1
    }
    #[unsafe(no_mangle)]
    extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
        _: FilterEnvoyPtr,
        _: usize,
        _: *const ModuleBuffer,
        _: usize,
        _: u64,
    ) -> i32 {
        1
    }
}
