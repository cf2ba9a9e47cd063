//! Safe wrappers over the raw callbacks in [`crate::abi`]. Together with `hooks` this is the
//! only place with `unsafe`; each block states why it is sound.
//!
//! Lifetimes: a header slice returned by Envoy is valid until the hook returns or a header
//! setter is called on the same stream. [`EnvoyStream`] encodes that in the borrow checker:
//! header getters, metadata and stats take `&self`; header setters and local replies need
//! `&mut self`; the stream handle itself never outlives the hook.

use std::ffi::c_void;

use crate::abi::{
    self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, ModuleBuffer,
    ModuleHttpHeader, ModuleKeyValue,
};
use crate::gateway::RequestView;
use crate::identify::HeaderField;

/// Envoy's log levels, as the module uses them.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn raw(self) -> i32 {
        match self {
            Level::Trace => abi::LOG_TRACE,
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
        }
    }
}

/// True when a message at `level` would be written (so callers skip formatting otherwise).
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: takes a plain integer; callable from any thread.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(level.raw()) }
}

/// Writes to Envoy's log under the `dynamic_modules` logger, prefixed with the module name.
pub fn log(level: Level, message: &str) {
    if !log_enabled(level) {
        return;
    }
    let line = format!("sandbox_gateway: {message}");
    // SAFETY: the buffer points into `line`, which outlives the call; Envoy copies it.
    unsafe {
        abi::envoy_dynamic_module_callback_log(
            level.raw(),
            ModuleBuffer::from_bytes(line.as_bytes()),
        )
    }
}

/// True when Envoy runs in `--mode validate` (configs are loaded, nothing serves), where the
/// module must not start background work.
pub fn is_validation_mode() -> bool {
    // SAFETY: no arguments; reads a process-wide flag.
    unsafe { abi::envoy_dynamic_module_callback_is_validation_mode() }
}

/// Keeps this shared object mapped for the life of the process, even when Envoy drops the last
/// filter config that uses it (a background thread may still be running module code). Returns
/// false if the library could not be pinned.
pub fn pin_module() -> bool {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let anchor = pin_module as *const () as *const c_void;
    // SAFETY: `anchor` is an address inside this library and `info` is a valid out-pointer.
    if unsafe { libc::dladdr(anchor, info.as_mut_ptr()) } == 0 {
        return false;
    }
    // SAFETY: dladdr succeeded, so `info` is initialised.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: `dli_fname` is the NUL-terminated path of this loaded library. RTLD_NOLOAD only
    // takes another reference to the already-loaded object, and RTLD_NODELETE makes it permanent;
    // the handle is deliberately leaked.
    let handle = unsafe {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
    !handle.is_null()
}

/// Runs `on_http_filter_config_scheduled` on Envoy's main thread when committed (from any
/// thread). Deleted explicitly with [`ConfigScheduler::delete`] while no commit can race it.
#[derive(Debug)]
pub struct ConfigScheduler {
    ptr: *mut c_void,
}

// SAFETY: the ABI documents `scheduler_commit` as callable from any thread; the pointer itself is
// only dereferenced by Envoy.
unsafe impl Send for ConfigScheduler {}
// SAFETY: as above, `commit` takes `&self` and is thread-safe on Envoy's side.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    /// Queues `on_http_filter_config_scheduled(event_id)` on the main thread.
    pub fn commit(&self, event_id: u64) {
        // SAFETY: `ptr` is a live scheduler (deleted only by `delete`, which consumes self).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.ptr, event_id,
            )
        }
    }

    /// Frees the scheduler. The caller guarantees no other thread commits concurrently.
    pub fn delete(self) {
        // SAFETY: `ptr` came from `scheduler_new` and is deleted exactly once (self is consumed).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) }
    }
}

/// Converts an Envoy-owned buffer into a slice tied to `'a`.
///
/// # Safety
/// `buf` must come from Envoy for the current hook and stay valid for `'a` (i.e. until the hook
/// returns or a setter is called on the same stream).
unsafe fn envoy_slice<'a>(buf: EnvoyBuffer) -> &'a [u8] {
    if buf.ptr.is_null() || buf.length == 0 {
        return &[];
    }
    // SAFETY: non-null, `length` bytes owned by Envoy and valid for 'a per this fn's contract.
    unsafe { std::slice::from_raw_parts(buf.ptr.cast::<u8>(), buf.length) }
}

/// The filter-config handle Envoy passes to `config_new` (main thread only while defining).
#[derive(Debug, Clone, Copy)]
pub struct EnvoyConfig {
    ptr: ConfigEnvoyPtr,
}

impl EnvoyConfig {
    /// # Safety
    /// `ptr` must be the `filter_config_envoy_ptr` Envoy passed to `config_new`; the handle must
    /// only be used while that config is alive.
    pub unsafe fn from_raw(ptr: *mut c_void) -> Self {
        EnvoyConfig { ptr }
    }

    /// Defines a counter with the given label names; `None` if Envoy refused.
    pub fn define_counter(&self, name: &str, labels: &[&str]) -> Option<usize> {
        let labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::from_bytes(l.as_bytes()))
            .collect();
        let mut id = 0usize;
        // SAFETY: `self.ptr` is valid during config_new (type contract); name/labels point into
        // live Rust memory for the duration of the call; `id` is a valid out-pointer.
        let rc = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.ptr,
                ModuleBuffer::from_bytes(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (rc == abi::METRICS_SUCCESS).then_some(id)
    }

    /// Defines a gauge without labels; `None` if Envoy refused.
    pub fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: as for `define_counter`, with no labels.
        let rc = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                self.ptr,
                ModuleBuffer::from_bytes(name.as_bytes()),
                std::ptr::null(),
                0,
                &mut id,
            )
        };
        (rc == abi::METRICS_SUCCESS).then_some(id)
    }

    /// A scheduler bound to this config (main-thread only, during `config_new`).
    pub fn new_scheduler(&self) -> Option<ConfigScheduler> {
        // SAFETY: `self.ptr` is a live config handle (type contract).
        let ptr = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr)
        };
        (!ptr.is_null()).then_some(ConfigScheduler { ptr })
    }

    /// Sets a gauge defined on this config.
    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: `self.ptr` is a live config (type contract); no labels are passed.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.ptr,
                id,
                std::ptr::null(),
                0,
                value,
            );
        }
    }
}

/// One HTTP stream, valid for the duration of a single hook call.
#[derive(Debug)]
pub struct EnvoyStream {
    ptr: FilterEnvoyPtr,
}

impl EnvoyStream {
    /// # Safety
    /// `ptr` must be the `filter_envoy_ptr` of the hook being run, and the value must not outlive
    /// that hook call.
    pub unsafe fn from_raw(ptr: *mut c_void) -> Self {
        EnvoyStream { ptr }
    }

    /// A snapshot of the request headers (pseudo-headers included), taken with two callbacks and
    /// no allocation for up to [`INLINE_HEADERS`] headers. It borrows the stream, so no header
    /// setter can run while it is alive.
    pub fn request_headers(&self) -> RequestHeaders<'_> {
        // SAFETY: live stream (constructor contract).
        let n = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
            )
        };
        let mut snapshot = RequestHeaders {
            stream: self,
            inline: [EnvoyHttpHeader::empty(); INLINE_HEADERS],
            heap: Vec::new(),
            len: 0,
        };
        if n == 0 {
            return snapshot;
        }
        let out = if n <= INLINE_HEADERS {
            snapshot.inline.as_mut_ptr()
        } else {
            snapshot.heap = vec![EnvoyHttpHeader::empty(); n];
            snapshot.heap.as_mut_ptr()
        };
        // SAFETY: `out` points to at least `n` writable entries, the count Envoy just reported
        // for this map; nothing mutates the map in between (we hold `&self`).
        if unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
                out,
            )
        } {
            snapshot.len = n;
        }
        snapshot
    }

    /// Replaces all values of a request header.
    pub fn set_request_header(&mut self, name: &str, value: &[u8]) -> bool {
        // SAFETY: live stream; key and value point into live Rust memory and Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
                ModuleBuffer::from_bytes(name.as_bytes()),
                ModuleBuffer::from_bytes(value),
            )
        }
    }

    /// Removes a request header (the ABI removes when the value pointer is NULL).
    pub fn remove_request_header(&mut self, name: &str) {
        // SAFETY: live stream; a NULL value buffer is the documented way to remove a header.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
                ModuleBuffer::from_bytes(name.as_bytes()),
                ModuleBuffer::null(),
            );
        }
    }

    /// Sets string entries in one namespace of the stream's dynamic metadata (one callback).
    /// Metadata lives apart from the header map, so header slices stay valid (`&self`).
    pub fn set_dynamic_metadata(&self, namespace: &str, entries: &[(&str, &str)]) {
        let mut raw = [ModuleKeyValue {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        }; 4];
        let n = entries.len().min(raw.len());
        for (slot, (k, v)) in raw.iter_mut().zip(entries) {
            *slot = ModuleKeyValue {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            };
        }
        // SAFETY: live stream; the namespace and `raw[..n]` point into memory that outlives the
        // call, and Envoy copies the strings into the metadata struct.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
                self.ptr,
                ModuleBuffer::from_bytes(namespace.as_bytes()),
                raw.as_ptr(),
                n,
            );
        }
    }

    /// Sends a complete local reply. The caller must then stop iteration.
    pub fn send_response(
        &mut self,
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let headers: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: live stream; the header array, body and details point into memory that lives
        // until after the call, and Envoy copies what it keeps.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::from_bytes(body),
                ModuleBuffer::from_bytes(details.as_bytes()),
            );
        }
    }

    /// Increments a counter defined on this stream's config.
    pub fn increment_counter(&self, id: usize, labels: &[&str], value: u64) {
        let mut raw = [ModuleBuffer::null(); 4];
        let n = labels.len().min(raw.len());
        for (slot, l) in raw.iter_mut().zip(labels) {
            *slot = ModuleBuffer::from_bytes(l.as_bytes());
        }
        // SAFETY: live stream; `raw[..n]` points into the caller's label strings for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id,
                raw.as_ptr(),
                n,
                value,
            );
        }
    }

    /// Sets a label-less gauge defined on this stream's config.
    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: live stream; no labels.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_set_gauge(
                self.ptr,
                id,
                std::ptr::null(),
                0,
                value,
            );
        }
    }
}

/// Headers read at once from Envoy; see [`EnvoyStream::request_headers`].
pub const INLINE_HEADERS: usize = 48;

/// Request headers of one stream, valid while it borrows the stream.
pub struct RequestHeaders<'s> {
    stream: &'s EnvoyStream,
    inline: [EnvoyHttpHeader; INLINE_HEADERS],
    heap: Vec<EnvoyHttpHeader>,
    len: usize,
}

impl std::fmt::Debug for RequestHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHeaders")
            .field("len", &self.len)
            .finish()
    }
}

impl<'s> RequestHeaders<'s> {
    fn entries(&self) -> &[EnvoyHttpHeader] {
        if self.heap.is_empty() {
            &self.inline[..self.len.min(INLINE_HEADERS)]
        } else {
            &self.heap[..self.len]
        }
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'s [u8]> + 'a {
        self.entries().iter().filter_map(move |h| {
            // SAFETY: Envoy filled these entries for the current hook; the map cannot change
            // while `self` borrows the stream (setters need `&mut EnvoyStream`), so both slices
            // stay valid for 's.
            let key = unsafe {
                envoy_slice(EnvoyBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                })
            };
            // SAFETY: as above.
            (key == name.as_bytes()).then(|| unsafe {
                envoy_slice(EnvoyBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                })
            })
        })
    }

    /// A header by its lower-case name: absent, one value, or repeated.
    pub fn get(&self, name: &str) -> HeaderField<'s> {
        let mut it = self.values(name);
        match (it.next(), it.next()) {
            (None, _) => HeaderField::Absent,
            (Some(v), None) => HeaderField::One(v),
            _ => HeaderField::Repeated,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }
}

impl RequestView for RequestHeaders<'_> {
    fn header(&self, name: &str) -> HeaderField<'_> {
        self.get(name)
    }

    fn routed_cluster(&self) -> Option<&[u8]> {
        self.stream.routed_cluster()
    }
}

impl EnvoyStream {
    /// The cluster Envoy's route table picked (computes and caches the route if needed).
    pub fn routed_cluster(&self) -> Option<&[u8]> {
        let mut buf = EnvoyBuffer::empty();
        // SAFETY: live stream; `buf` is a valid out-pointer.
        let found =
            unsafe { abi::envoy_dynamic_module_callback_http_get_cluster_name(self.ptr, &mut buf) };
        // SAFETY: the buffer belongs to the current hook and the slice borrows `self`.
        found.then(|| unsafe { envoy_slice(buf) })
    }
}
