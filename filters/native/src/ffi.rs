//! Envoy 1.40's dynamic-module C ABI (`v0.2.0`): every `unsafe` of the native build.
//!
//! Two halves. [`EnvoyFilter`], [`EnvoyConfig`] and [`log`] wrap the callbacks Envoy exports
//! (declared here from the verified facts in `shared/DYNAMIC-MODULES.md`, only those the
//! filter uses: a Rust cdylib binds every import at load, so a callback the running Envoy
//! lacks fails the load with `undefined symbol`, clearly). Below them, the hooks this module
//! exports turn Envoy's raw pointers back into the module's own objects and call the safe
//! code in `lib.rs`, inside [`guard`]: a panic never unwinds into Envoy (it would abort the
//! whole process); it fails the request closed instead.
//!
//! Ownership, as the ABI defines it: what Envoy hands over (header values, body chunks, the
//! configuration bytes) is valid only during the call, so it is copied before the hook
//! returns; what the module passes in is copied by Envoy during the call. The module
//! allocates and frees its own configuration ([`crate::Config`], an `Arc`) and filter
//! ([`crate::Filter`], a `Box`) objects.
//!
//! Threads: `program_init` and `config_new` run on the main thread, a filter's hooks on the
//! worker that owns its connection, one at a time. The configuration is shared by every
//! worker (`Send + Sync`) and may be dropped on any of them.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::{Config, Filter, Hook};

/// The ABI version Envoy 1.40 expects from `program_init`.
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// `envoy_buffer`: bytes owned by Envoy, valid during the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// `module_buffer`: bytes owned by the module, copied by Envoy during the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// A NULL value: `http_set_header` removes the header.
    const NULL: Self = Self { ptr: std::ptr::null(), length: 0 };
}

/// `envoy_http_header` / `module_http_header`: 32 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl HttpHeader {
    /// A header Envoy reads during one call: it points into `key` and `value`, which must
    /// outlive that call (Envoy copies what it keeps).
    fn borrowing(key: &str, value: &str) -> Self {
        Self { key_ptr: key.as_ptr(), key_length: key.len(), value_ptr: value.as_ptr(), value_length: value.len() }
    }
}

/// Header map kinds (`envoy_dynamic_module_type_http_header_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

/// Body kinds (`envoy_dynamic_module_type_http_body_type`): per direction, the chunk of the
/// current callback and what Envoy holds for the filter from earlier callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Request,
    Response,
}

impl Body {
    fn received(self) -> u32 {
        match self {
            Body::Request => 0,
            Body::Response => 2,
        }
    }

    fn buffered(self) -> u32 {
        match self {
            Body::Request => 1,
            Body::Response => 3,
        }
    }
}

/// Envoy's log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// `envoy_dynamic_module_type_http_callout_init_result`: 0 is success.
const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result`: 0 is success (1 reset, 2 the answer
/// exceeded the buffer limit).
const CALLOUT_SUCCESS: u32 = 0;

/// Metric callback results (`envoy_dynamic_module_type_metrics_result`): 0 is success.
const METRICS_SUCCESS: u32 = 0;

// Declared from DYNAMIC-MODULES.md (Envoy 1.40); enums are C ints, passed as u32.
extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(fe: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(fe: *mut c_void, kind: u32, out: *mut HttpHeader) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(fe: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        fe: *mut c_void,
        id_out: *mut u64,
        cluster: ModuleBuffer,
        headers: *const HttpHeader,
        count: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_set_header(
        fe: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        fe: *mut c_void,
        status: u32,
        headers: *const HttpHeader,
        count: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(fe: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(fe: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(fe: *mut c_void, kind: u32, out: *mut EnvoyBuffer) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(fe: *mut c_void, kind: u32, data: ModuleBuffer) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(fe: *mut c_void, kind: u32, length: usize) -> bool;
    fn envoy_dynamic_module_callback_http_get_buffer_limit(fe: *mut c_void) -> u64;
    fn envoy_dynamic_module_callback_http_set_buffer_limit(fe: *mut c_void, limit: u64);
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        fe: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        ce: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        count: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        ce: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        count: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        ce: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        count: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(fe: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(fe: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(ce: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        fe: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        count: usize,
        value: u64,
    ) -> u32;
}

/// Writes `message` to Envoy's log (the `dynamic_modules` logger), when that level is on.
pub fn log(level: LogLevel, message: &dyn Fn() -> String) {
    // SAFETY: plain value arguments; callable from any thread.
    if !unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) } {
        return;
    }
    let text = message();
    // SAFETY: `text` outlives the call, and Envoy copies it during the call.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(text.as_bytes())) }
}

/// Bytes Envoy owns, copied out.
///
/// SAFETY (callers): `ptr` points at `length` readable bytes (or `length` is 0), valid now.
unsafe fn copy_out(ptr: *const u8, length: usize) -> Vec<u8> {
    // SAFETY: guaranteed by the caller.
    unsafe { borrow(ptr, length) }.to_vec()
}

/// A view of bytes Envoy owns, for as long as the caller's borrow says.
///
/// SAFETY (callers): `ptr` points at `length` readable bytes (or `length` is 0) that stay
/// valid and unchanged for the lifetime `'a` the caller picks.
unsafe fn borrow<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

/// Envoy's handle of one HTTP filter (stream), valid for the duration of a hook.
pub struct EnvoyFilter(*mut c_void);

impl EnvoyFilter {
    /// Runs `read` over every header of `map`, pseudo-headers included, as views of
    /// Envoy's own memory: nothing is copied but values that are not UTF-8, which are
    /// decoded leniently (U+FFFD), as in the wasm build.
    pub fn with_headers<R>(&self, map: HeaderMap, read: impl FnOnce(&[(&str, &str)]) -> R) -> R {
        // SAFETY: `self.0` is the live filter handle of the current hook.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map as u32) };
        if count == 0 {
            return read(&[]);
        }
        let empty =
            HttpHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };
        // A request's or response's headers fit on the stack; a larger map takes the heap.
        let mut on_stack = [empty; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let raw: &mut [HttpHeader] = match on_stack.get_mut(..count) {
            Some(raw) => raw,
            None => {
                on_heap.resize(count, empty);
                &mut on_heap
            }
        };
        // SAFETY: `raw` has room for the `count` headers Envoy just reported; Envoy fills it.
        if !unsafe { envoy_dynamic_module_callback_http_get_headers(self.0, map as u32, raw.as_mut_ptr()) } {
            return read(&[]);
        }
        // SAFETY: Envoy filled each header with pointers into its header map. Changing a
        // header map takes `&mut self` (`set_header`, `send_response`), which this `&self`
        // borrow rules out while `read` runs, and the views are bound to this call.
        let view = |h: &HttpHeader| unsafe { (borrow(h.key_ptr, h.key_length), borrow(h.value_ptr, h.value_length)) };
        // ASCII names and values (almost always) are lent as they are, from the stack.
        let mut pairs = [("", ""); STACK_HEADERS];
        if let Some(slots) = pairs.get_mut(..raw.len()) {
            let mut ascii = true;
            for (slot, h) in slots.iter_mut().zip(raw.iter()) {
                let (k, v) = view(h);
                match (ascii_str(k), ascii_str(v)) {
                    (Some(k), Some(v)) => *slot = (k, v),
                    _ => {
                        ascii = false;
                        break;
                    }
                }
            }
            if ascii {
                return read(slots);
            }
        }
        let decoded: Vec<(Cow<'_, str>, Cow<'_, str>)> = raw
            .iter()
            .map(|h| {
                let (k, v) = view(h);
                (lossy(k), lossy(v))
            })
            .collect();
        let pairs: Vec<(&str, &str)> = decoded.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        read(&pairs)
    }

    /// Replaces every value of header `name`; `None` removes it.
    pub fn set_header(&mut self, map: HeaderMap, name: &str, value: Option<&str>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: live handle; `name` and `value` outlive the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(self.0, map as u32, ModuleBuffer::of(name.as_bytes()), value)
        }
    }

    /// Makes Envoy select the route again (a no-op outside the request path).
    pub fn clear_route_cache(&mut self) {
        // SAFETY: live handle; the callback only reads it.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// Lets a request paused in a hook continue (headers, then the buffered body).
    pub fn continue_decoding(&mut self) {
        // SAFETY: live handle; the request was paused by this filter.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// A scheduler of this stream (`None` if Envoy gives none): its commits call
    /// `http_filter_scheduled` on this stream's worker, from any thread.
    pub fn scheduler(&mut self) -> Option<FilterScheduler> {
        // SAFETY: live handle, on the stream's worker (inside a hook).
        let scheduler = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!scheduler.is_null()).then_some(FilterScheduler(scheduler))
    }

    /// Starts an HTTP callout to `cluster` (`headers` must hold `:method`, `:path` and
    /// `:authority`); `Ok(id)`: `http_callout_done` follows with that id. `Err`: the
    /// callout init result (1 missing headers, 2 cluster not found, 3 duplicate id, 4
    /// cannot create the request).
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let raw: Vec<HttpHeader> = headers.iter().map(|(k, v)| HttpHeader::borrowing(k, v)).collect();
        let mut id = 0u64;
        // SAFETY: live handle; `id` is a valid place for Envoy to write the callout id; `raw`
        // points into `headers`, which with `cluster` and `body` outlives the call (Envoy
        // copies all of it into the request it creates).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// Answers locally. `details` becomes `%RESPONSE_CODE_DETAILS%`; Envoy adds
    /// `content-length`.
    pub fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let raw: Vec<HttpHeader> = headers.iter().map(|(k, v)| HttpHeader::borrowing(k, v)).collect();
        // SAFETY: live handle; `raw` points into `headers`, which with `body` and
        // `details` outlives the call (Envoy copies all of it).
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    /// The slices of one part of a body (`kind`), as Envoy holds them (zero-copy), added
    /// to `out`.
    fn slices(&self, kind: u32, out: &mut Slices) {
        // SAFETY: live handle.
        let count = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, kind) };
        if count == 0 {
            return;
        }
        let empty = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        let mut on_stack = [empty; STACK_SLICES];
        let mut on_heap = Vec::new();
        let raw: &mut [EnvoyBuffer] = match on_stack.get_mut(..count) {
            Some(raw) => raw,
            None => {
                on_heap.resize(count, empty);
                &mut on_heap
            }
        };
        // SAFETY: `raw` has room for the `count` chunks Envoy just reported.
        if !unsafe { envoy_dynamic_module_callback_http_get_body_chunks(self.0, kind, raw.as_mut_ptr()) } {
            return;
        }
        for chunk in raw.iter().filter(|c| !c.ptr.is_null() && c.length > 0) {
            out.push(*chunk);
        }
    }

    /// Runs `read` over the body this hook sees: what Envoy holds for the filter, then the
    /// current chunk. A body in one slice (the common small request) is read in place;
    /// otherwise its slices are copied into one buffer.
    pub fn with_body<R>(&self, body: Body, read: impl FnOnce(&[u8]) -> R) -> R {
        let mut slices = Slices::default();
        self.slices(body.buffered(), &mut slices);
        self.slices(body.received(), &mut slices);
        match slices.as_slice() {
            [] => read(&[]),
            // SAFETY: a zero-copy view of Envoy's buffer. Changing a body takes `&mut self`
            // (`replace_body`), which this `&self` borrow rules out while `read` runs, and
            // the view is bound to this call.
            [one] => read(unsafe { borrow(one.ptr, one.length) }),
            many => {
                let mut whole = Vec::with_capacity(many.iter().map(|c| c.length).sum());
                for chunk in many {
                    // SAFETY: a zero-copy view of Envoy's buffer, copied at once.
                    whole.extend_from_slice(unsafe { borrow(chunk.ptr, chunk.length) });
                }
                read(&whole)
            }
        }
    }

    /// The body this hook sees, copied (see [`Self::with_body`]).
    pub fn body(&self, body: Body) -> Vec<u8> {
        self.with_body(body, <[u8]>::to_vec)
    }

    /// The size of [`Self::body`], without copying it or listing its slices.
    pub fn body_size(&self, body: Body) -> usize {
        self.part_size(body.buffered()) + self.part_size(body.received())
    }

    fn part_size(&self, kind: u32) -> usize {
        // SAFETY: live handle, plain values.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, kind) }
    }

    /// Replaces the body this hook sees with `new`: both parts drained, `new` appended to
    /// the current chunk (or, where there is none, as in the trailers hook, to what Envoy
    /// holds). Envoy sends what it holds followed by the current chunk.
    pub fn replace_body(&mut self, body: Body, new: &[u8]) -> bool {
        for kind in [body.buffered(), body.received()] {
            let length = self.part_size(kind);
            if length > 0 {
                // SAFETY: live handle; drains at most what Envoy reported it holds.
                unsafe { envoy_dynamic_module_callback_http_drain_body(self.0, kind, length) };
            }
        }
        if new.is_empty() {
            return true;
        }
        // SAFETY: live handle; `new` outlives the call (Envoy copies it).
        unsafe {
            envoy_dynamic_module_callback_http_append_body(self.0, body.received(), ModuleBuffer::of(new))
                || envoy_dynamic_module_callback_http_append_body(self.0, body.buffered(), ModuleBuffer::of(new))
        }
    }

    /// Raises this stream's buffer limit to at least `bytes`.
    pub fn raise_buffer_limit(&self, bytes: u64) {
        // SAFETY: live handle, plain values.
        unsafe {
            if envoy_dynamic_module_callback_http_get_buffer_limit(self.0) < bytes {
                envoy_dynamic_module_callback_http_set_buffer_limit(self.0, bytes);
            }
        }
    }

    /// Filter state `key` = `value` (bytes), as `%FILTER_STATE(key:PLAIN)%` reads it.
    pub fn set_filter_state(&self, key: &[u8], value: &str) -> bool {
        // SAFETY: live handle; both buffers outlive the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Records one sample in an unlabelled histogram; `false` when Envoy refused it.
    pub fn record_histogram(&self, id: crate::metrics::Histogram, value: u64) -> bool {
        let no_labels: &[ModuleBuffer] = &[];
        // SAFETY: live handle; no label values (the unlabelled id space, as defined).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_record_histogram_value(self.0, id.0, no_labels.as_ptr(), 0, value)
        };
        result == METRICS_SUCCESS
    }
}

/// Headers read without a heap allocation (a larger map is read through the heap).
const STACK_HEADERS: usize = 48;
/// Body slices listed without a heap allocation (a body in more slices is listed on the heap).
const STACK_SLICES: usize = 8;

/// The slices of a body: on the stack, or all on the heap once there are more than
/// [`STACK_SLICES`].
struct Slices {
    stack: [EnvoyBuffer; STACK_SLICES],
    len: usize,
    heap: Vec<EnvoyBuffer>,
}

impl Default for Slices {
    fn default() -> Self {
        Self { stack: [EnvoyBuffer { ptr: std::ptr::null(), length: 0 }; STACK_SLICES], len: 0, heap: Vec::new() }
    }
}

impl Slices {
    fn push(&mut self, chunk: EnvoyBuffer) {
        if self.heap.is_empty() {
            if let Some(slot) = self.stack.get_mut(self.len) {
                *slot = chunk;
                self.len += 1;
                return;
            }
            self.heap.extend_from_slice(&self.stack);
        }
        self.heap.push(chunk);
    }

    /// Every slice, in order.
    fn as_slice(&self) -> &[EnvoyBuffer] {
        if self.heap.is_empty() {
            self.stack.get(..self.len).unwrap_or_default()
        } else {
            &self.heap
        }
    }
}

/// `bytes` as text when it is ASCII (valid UTF-8 as it is), without a copy.
fn ascii_str(bytes: &[u8]) -> Option<&str> {
    // SAFETY: ASCII bytes are valid UTF-8.
    bytes.is_ascii().then(|| unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// Header bytes as text: borrowed when they are UTF-8, decoded leniently (U+FFFD) when not.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    // Header names and values are almost always ASCII, which an ASCII scan settles in a
    // few instructions per word; `from_utf8` costs about 100 per header, and the lossy
    // decoder's chunk iterator several times that.
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Envoy's handle of a filter configuration: metrics can be defined through it only during
/// `config_new`; its scheduler's events (`config_scheduled`) bring it back on the main thread.
pub struct EnvoyConfig(*mut c_void);

impl EnvoyConfig {
    fn define(&self, histogram: bool, name: &str, labels: &[&str]) -> Option<usize> {
        let labels: Vec<ModuleBuffer> = labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
        let mut id = 0usize;
        // SAFETY: `self.0` is the configuration handle of the running `config_new`; the
        // buffers outlive the call; `id` is a valid place for Envoy to write the id.
        let result = unsafe {
            let define = if histogram {
                envoy_dynamic_module_callback_http_filter_config_define_histogram
            } else {
                envoy_dynamic_module_callback_http_filter_config_define_counter
            };
            define(self.0, ModuleBuffer::of(name.as_bytes()), labels.as_ptr(), labels.len(), &mut id)
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Defines a counter with these label names.
    pub fn define_counter(&self, name: &str, labels: &[&str]) -> Option<crate::metrics::LabelledCounter> {
        self.define(false, name, labels).map(crate::metrics::LabelledCounter)
    }

    /// Defines a histogram without labels (its name carries them, folded).
    pub fn define_histogram(&self, name: &str) -> Option<crate::metrics::Histogram> {
        self.define(true, name, &[]).map(crate::metrics::Histogram)
    }

    /// Adds `value` to a labelled counter of this configuration, outside any stream (the
    /// main thread's flush of summed increments); `false` when Envoy refused it.
    pub fn increment_counter(&self, id: crate::metrics::LabelledCounter, labels: &[&str], value: u64) -> bool {
        let labels: Vec<ModuleBuffer> = labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
        // SAFETY: `self.0` is the live configuration handle Envoy passed to the running
        // hook; `labels` (and the strings it points into) outlive the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id.0,
                labels.as_ptr(),
                labels.len(),
                value,
            )
        };
        result == METRICS_SUCCESS
    }

    /// A scheduler of this configuration (`None` if Envoy gives none).
    pub fn scheduler(&self) -> Option<ConfigScheduler> {
        // SAFETY: `self.0` is the configuration handle of the running `config_new`.
        let scheduler = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!scheduler.is_null()).then_some(ConfigScheduler(scheduler))
    }
}

/// A configuration's scheduler: each [`Self::commit`] makes Envoy call
/// `config_scheduled` on its main thread with the event id, for as long as the
/// configuration lives (afterwards a commit is a no-op). Deleted when dropped.
pub struct ConfigScheduler(*mut c_void);

// SAFETY: Envoy's scheduler commit posts to the main thread's dispatcher and may be called
// from any thread; the pointer is deleted once, by `Drop`, which needs the only owner.
unsafe impl Send for ConfigScheduler {}

impl ConfigScheduler {
    /// Asks for `config_scheduled(event)` on the main thread.
    pub fn commit(&self, event: u64) {
        // SAFETY: a scheduler from `scheduler_new`, not deleted yet (`Drop` deletes it).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: a scheduler from `scheduler_new`, deleted exactly once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// A stream's scheduler: each [`Self::commit`] makes Envoy call `http_filter_scheduled` on
/// the stream's worker. Envoy's scheduler holds the filter weakly, so a commit after the
/// stream ended does nothing. Deleted when dropped.
pub struct FilterScheduler(*mut c_void);

// SAFETY: Envoy's filter scheduler commit posts to the stream's worker dispatcher and may be
// called from any thread (it reads only its weak filter pointer and that dispatcher); the
// pointer is deleted once, by `Drop`, which needs the only owner.
unsafe impl Send for FilterScheduler {}
// SAFETY: `commit` takes `&self` and Envoy's commit is thread-safe (see `Send`).
unsafe impl Sync for FilterScheduler {}

impl FilterScheduler {
    /// Asks for `http_filter_scheduled(event)` on the stream's worker.
    pub fn commit(&self, event: u64) {
        // SAFETY: a scheduler from `scheduler_new`, not deleted yet (`Drop` deletes it).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) }
    }
}

impl Drop for FilterScheduler {
    fn drop(&mut self) {
        // SAFETY: a scheduler from `scheduler_new`, deleted exactly once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

// ------------------------------------------------------------------------ exported hooks

/// Runs a filter hook with the module's filter behind `fm`, catching any panic: then the
/// request fails closed ([`crate::fail_closed`]) and `stopped` is what Envoy gets.
fn guard(
    fe: *mut c_void,
    fm: *const c_void,
    hook: Hook,
    stopped: u32,
    run: impl FnOnce(&mut Filter, &mut EnvoyFilter) -> u32,
) -> u32 {
    let mut envoy = EnvoyFilter(fe);
    if fm.is_null() {
        // `http_filter_new` failed: nothing governs this stream, so nothing passes it.
        let _ = catch_unwind(AssertUnwindSafe(|| crate::refuse_ungoverned(&mut envoy, hook)));
        return stopped;
    }
    // SAFETY: `fm` is the pointer `http_filter_new` returned (a leaked `Box<Filter>`), not yet
    // given to `http_filter_destroy`; Envoy calls one filter's hooks on one thread, one at a
    // time, so this is the only reference while the hook runs.
    let filter = unsafe { &mut *(fm as *mut Filter) };
    match catch_unwind(AssertUnwindSafe(|| run(filter, &mut envoy))) {
        Ok(status) => status,
        Err(_) => {
            // The panic hook has logged what happened; failing closed must not panic either.
            let _ = catch_unwind(AssertUnwindSafe(|| crate::fail_closed(filter, &mut envoy, hook)));
            stopped
        }
    }
}

/// The module is loaded: install the panic hook, answer the ABI version.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    let _ = catch_unwind(crate::program_init);
    ABI_VERSION.as_ptr()
}

/// A new configuration (main thread). NULL refuses it: Envoy NACKs, the last good one serves.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    ce: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy's configuration bytes, valid during this call; copied at once.
    let bytes = unsafe { copy_out(config.ptr, config.length) };
    let envoy = EnvoyConfig(ce);
    match catch_unwind(AssertUnwindSafe(|| Config::new(&bytes, &envoy))) {
        Ok(Some(config)) => Arc::into_raw(Arc::new(config)) as *const c_void,
        Ok(None) | Err(_) => std::ptr::null(),
    }
}

/// The configuration's last filter is gone (any thread).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(cm: *const c_void) {
    if cm.is_null() {
        return;
    }
    // SAFETY: `cm` came from `Arc::into_raw` in `config_new` and Envoy destroys it once;
    // filters hold their own `Arc` clones, so dropping this one frees nothing they use.
    let config = unsafe { Arc::from_raw(cm as *const Config) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(config)));
}

/// An event of a configuration's scheduler, on the main thread: the metrics flush. The
/// event id names the counters to flush ([`crate::metrics::flush`]); `cm` is not read, so a
/// late event finds nothing to do rather than a configuration already freed.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    ce: *mut c_void,
    _cm: *const c_void,
    event: u64,
) {
    let envoy = EnvoyConfig(ce);
    let _ = catch_unwind(AssertUnwindSafe(|| crate::metrics::flush(&envoy, event)));
}

/// A new stream (worker thread).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(cm: *const c_void, _fe: *mut c_void) -> *const c_void {
    if cm.is_null() {
        return std::ptr::null();
    }
    // SAFETY: `cm` came from `Arc::into_raw` in `config_new` and is alive (Envoy destroys a
    // configuration only after its last filter); this adds the filter's own reference.
    let config = unsafe {
        Arc::increment_strong_count(cm as *const Config);
        Arc::from_raw(cm as *const Config)
    };
    match catch_unwind(AssertUnwindSafe(move || Filter::new(config))) {
        Ok(filter) => Box::into_raw(Box::new(filter)) as *const c_void,
        Err(_) => std::ptr::null(),
    }
}

/// The stream's filter is no longer used (worker thread).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(fm: *const c_void) {
    if fm.is_null() {
        return;
    }
    // SAFETY: `fm` came from `Box::into_raw` in `http_filter_new`; Envoy destroys it once,
    // after its last hook.
    let filter = unsafe { Box::from_raw(fm as *mut Filter) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(filter)));
}

/// Header statuses: Continue 0, StopIteration 1.
const HEADERS_STOP: u32 = 1;
/// Body statuses: Continue 0, StopIterationAndBuffer 1, StopIterationNoBuffer 3.
const BODY_STOP_NO_BUFFER: u32 = 3;
/// Trailers statuses: Continue 0, StopIteration 1.
const TRAILERS_STOP: u32 = 1;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    fe: *mut c_void,
    fm: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(fe, fm, Hook::RequestHeaders, HEADERS_STOP, |f, e| crate::request_headers(f, e, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    fe: *mut c_void,
    fm: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(fe, fm, Hook::RequestBody, BODY_STOP_NO_BUFFER, |f, e| crate::request_body(f, e, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(fe: *mut c_void, fm: *const c_void) -> u32 {
    guard(fe, fm, Hook::RequestTrailers, TRAILERS_STOP, crate::request_trailers)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    fe: *mut c_void,
    fm: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(fe, fm, Hook::ResponseHeaders, HEADERS_STOP, |f, e| crate::response_headers(f, e, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    fe: *mut c_void,
    fm: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(fe, fm, Hook::ResponseBody, BODY_STOP_NO_BUFFER, |f, e| crate::response_body(f, e, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_fe: *mut c_void, _fm: *const c_void) -> u32 {
    0
}

/// Once per stream, however it ended, before the access loggers run.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(fe: *mut c_void, fm: *const c_void) {
    guard(fe, fm, Hook::StreamComplete, 0, |f, e| {
        crate::stream_complete(f, e);
        0
    });
}

/// A callout this stream started ended (worker thread): its answer, copied out, or why it
/// failed.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    fe: *mut c_void,
    fm: *const c_void,
    id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_count: usize,
    chunks: *const EnvoyBuffer,
    chunks_count: usize,
) {
    let answer = catch_unwind(AssertUnwindSafe(|| {
        if result != CALLOUT_SUCCESS {
            let why = if result == 1 {
                "the callout was reset (no connection, or a timeout)"
            } else {
                "the answer was too large"
            };
            return Err(why.to_string());
        }
        let headers: &[HttpHeader] = if headers.is_null() || headers_count == 0 {
            &[]
        } else {
            // SAFETY: Envoy passes `headers_count` headers at `headers`, valid during this hook.
            unsafe { std::slice::from_raw_parts(headers, headers_count) }
        };
        let chunks: &[EnvoyBuffer] = if chunks.is_null() || chunks_count == 0 {
            &[]
        } else {
            // SAFETY: Envoy passes `chunks_count` body slices at `chunks`, valid during this hook.
            unsafe { std::slice::from_raw_parts(chunks, chunks_count) }
        };
        let mut response = meshgate_core::gateway::CalloutResponse::default();
        for h in headers {
            // SAFETY: each header points into Envoy's response header map, valid during this
            // hook; the bytes are copied out before it returns.
            let (key, value) = unsafe { (copy_out(h.key_ptr, h.key_length), copy_out(h.value_ptr, h.value_length)) };
            let key = String::from_utf8_lossy(&key).to_ascii_lowercase();
            let value = String::from_utf8_lossy(&value).into_owned();
            if key == ":status" {
                response.status = value.trim().parse().unwrap_or(0);
            }
            response.headers.push((key, value));
        }
        for c in chunks {
            // SAFETY: each slice points into Envoy's response body, valid during this hook.
            response.body.extend_from_slice(unsafe { borrow(c.ptr, c.length) });
        }
        Ok(response)
    }))
    .unwrap_or_else(|_| Err("the callout's answer could not be read".to_string()));
    guard(fe, fm, Hook::CalloutDone, 0, |f, e| {
        crate::callout_done(f, e, id, answer);
        0
    });
}

// Hooks Envoy 1.40 requires and the filter does not use.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _fe: *mut c_void,
    _fm: *const c_void,
    _stream: u64,
    _headers: *const HttpHeader,
    _count: usize,
    _end_of_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _fe: *mut c_void,
    _fm: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _count: usize,
    _end_of_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _fe: *mut c_void,
    _fm: *const c_void,
    _stream: u64,
    _trailers: *const HttpHeader,
    _count: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _fe: *mut c_void,
    _fm: *const c_void,
    _stream: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _fe: *mut c_void,
    _fm: *const c_void,
    _stream: u64,
    _reason: u32,
) {
}

/// An event of this stream's scheduler (worker thread): the token exchange this stream
/// waits for settled ([`crate::token_ready`]).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(fe: *mut c_void, fm: *const c_void, event: u64) {
    guard(fe, fm, Hook::TokenReady, 0, |f, e| {
        crate::token_ready(f, e, event);
        0
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _fe: *mut c_void,
    _fm: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _fe: *mut c_void,
    _fm: *const c_void,
) {
}
