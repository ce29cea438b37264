//! A memory VFS that remembers which parts of the database file a write touched.
//!
//! Each open database lives in one `Vec<u8>` this module owns (the one copy of the image in
//! memory). SQLite reads and writes it through the VFS methods below; every `xWrite` to a main
//! database file records the 512-byte sectors it covered. The incremental layout turns those
//! into the changed pages of a save (`crate::storage::delta`), so finding what a write changed costs
//! O(changed pages), never a scan or hash of the image.
//!
//! Why not memdb (what `sqlite3_deserialize` uses): it writes with a plain `memcpy` and has no
//! hook, and `sqlite3_deserialize` refuses any VFS but its own. This VFS is memdb's job plus
//! the record; journals and temp files are plain anonymous buffers, and connections use
//! `journal_mode=MEMORY`, so only the main file is ever written through here in practice.
//!
//! Safety model: a file's state is reachable from Rust only through
//! `SQLITE_FCNTL_FILE_POINTER` on a connection borrowed mutably (see `crate::sqlite`), so
//! SQLite is never running on the same file while Rust reads or patches it. The state is
//! owned by SQLite's file object and freed in `xClose`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The VFS name connections are opened with.
pub const NAME: &CStr = c"wsp-pages";

/// Granularity of the write record: SQLite's smallest page size.
pub const SECTOR: u64 = 512;

/// One file's bytes and what was written since the record was last cleared.
#[derive(Debug, Default)]
pub struct FileState {
    /// The file's contents.
    pub data: Vec<u8>,
    /// Sectors (offset / [`SECTOR`]) written since the last clear; main database files only.
    pub dirty: BTreeSet<u64>,
    /// Whether writes are recorded (main database files).
    track: bool,
}

impl FileState {
    /// Grows the buffer to `len` bytes, with modest headroom: SQLite appends a page at a time,
    /// and doubling (what `Vec` does) would hold up to twice the database in memory.
    fn grow_to(&mut self, len: usize) {
        if len > self.data.capacity() {
            let headroom = (len / 16).clamp(64 * 1024, 4 * 1024 * 1024);
            self.data.reserve_exact(len + headroom - self.data.len());
        }
        self.data.resize(len, 0);
    }
}

#[repr(C)]
struct PageFile {
    base: ffi::sqlite3_file,
    state: *mut FileState,
}

thread_local! {
    /// Buffers handed to the next `xOpen` of their name (see [`stage`]).
    static STAGED: RefCell<HashMap<String, Vec<u8>>> = RefCell::new(HashMap::new());
    /// The time SQLite's `'now'` reads on this thread while pinned (see [`pin_now`]).
    static PINNED_NOW_MS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Milliseconds from the Julian epoch SQLite counts in to the Unix epoch.
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;

/// Makes SQLite's current time (`'now'`, `CURRENT_TIMESTAMP`, `unixepoch()`) read `epoch_ms`
/// on this thread until the returned guard is dropped: a replayed libSQL transaction must see
/// the time it saw when it first ran.
#[must_use]
pub fn pin_now(epoch_ms: u64) -> NowPin {
    NowPin(PINNED_NOW_MS.with(|p| p.replace(Some(epoch_ms))))
}

/// Restores the previous current time when dropped.
#[derive(Debug)]
pub struct NowPin(Option<u64>);

impl Drop for NowPin {
    fn drop(&mut self) {
        PINNED_NOW_MS.with(|p| p.set(self.0));
    }
}

/// Makes `data` the contents of the file `name` the next time SQLite opens it on this thread.
/// A name opened without staging starts empty.
pub fn stage(name: &str, data: Vec<u8>) {
    STAGED.with(|s| s.borrow_mut().insert(name.to_owned(), data));
}

/// Drops a staged buffer that was never opened (the open failed before `xOpen`).
pub fn unstage(name: &str) {
    STAGED.with(|s| s.borrow_mut().remove(name));
}

/// The state behind a connection's main database file, if it is one of ours.
///
/// # Safety
/// `db` must be a valid connection handle that is not executing a statement for as long as
/// the returned reference is used, and the reference must not outlive the connection.
pub unsafe fn main_file<'a>(db: *mut ffi::sqlite3) -> Option<&'a mut FileState> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: FILE_POINTER writes the main database's sqlite3_file pointer into `file`.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast::<c_void>(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return None;
    }
    // SAFETY: `file` is a live sqlite3_file; its methods pointer tells whether it is a
    // PageFile (only this module installs IO_METHODS).
    unsafe {
        if !std::ptr::eq((*file).pMethods, &raw const IO_METHODS) {
            return None;
        }
        let page_file = file.cast::<PageFile>();
        (*page_file).state.as_mut()
    }
}

/// Registers the VFS with SQLite (once per process or isolate; not as the default).
pub fn register() -> Result<(), c_int> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(|| {
        // SAFETY: vfs_find(NULL) returns the default VFS or null; it is only read from.
        let default = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: c_int::try_from(size_of::<PageFile>()).unwrap_or(c_int::MAX),
            mxPathname: 512,
            pNext: std::ptr::null_mut(),
            zName: NAME.as_ptr(),
            pAppData: default.cast::<c_void>(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        // SAFETY: `vfs` is leaked, so it outlives every connection; 0 = not the default.
        unsafe { ffi::sqlite3_vfs_register(vfs, 0) }
    });
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_ok_int),
    xFileSize: Some(x_file_size),
    xLock: Some(x_ok_int),
    xUnlock: Some(x_ok_int),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The state of an open file.
///
/// # Safety
/// `file` must be a PageFile opened by `x_open` and not yet closed.
unsafe fn state<'a>(file: *mut ffi::sqlite3_file) -> &'a mut FileState {
    // SAFETY: per the contract, `state` was set by x_open and is freed only by x_close.
    unsafe { &mut *(*file.cast::<PageFile>()).state }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let data = if name.is_null() {
        Vec::new()
    } else {
        // SAFETY: SQLite passes a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        STAGED
            .with(|s| s.borrow_mut().remove(name.as_ref()))
            .unwrap_or_default()
    };
    let state = Box::new(FileState {
        data,
        dirty: BTreeSet::new(),
        track: flags & ffi::SQLITE_OPEN_MAIN_DB != 0,
    });
    let page_file = file.cast::<PageFile>();
    // SAFETY: SQLite allocated szOsFile (= size_of PageFile) bytes for `file`.
    unsafe {
        (*page_file).state = Box::into_raw(state);
        (*page_file).base.pMethods = &raw const IO_METHODS;
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let page_file = file.cast::<PageFile>();
    // SAFETY: the state was boxed by x_open; it is freed once, here.
    unsafe {
        let state = std::mem::replace(&mut (*page_file).state, std::ptr::null_mut());
        if !state.is_null() {
            drop(Box::from_raw(state));
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is open; `buf` has `amount` writable bytes.
    let (state, out) = unsafe {
        (
            state(file),
            std::slice::from_raw_parts_mut(buf.cast::<u8>(), usize::try_from(amount).unwrap_or(0)),
        )
    };
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let available = state.data.len().saturating_sub(start).min(out.len());
    if available > 0 {
        out[..available].copy_from_slice(&state.data[start..start + available]);
    }
    if available < out.len() {
        out[available..].fill(0);
        return ffi::SQLITE_IOERR_SHORT_READ;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is open; `buf` has `amount` readable bytes.
    let (state, input) = unsafe {
        (
            state(file),
            std::slice::from_raw_parts(buf.cast::<u8>(), usize::try_from(amount).unwrap_or(0)),
        )
    };
    let (Ok(start), Ok(offset)) = (usize::try_from(offset), u64::try_from(offset)) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let end = start + input.len();
    if end > state.data.len() {
        state.grow_to(end);
    }
    state.data[start..end].copy_from_slice(input);
    if state.track && !input.is_empty() {
        let last = (offset + input.len() as u64 - 1) / SECTOR;
        state.dirty.extend(offset / SECTOR..=last);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: `file` is open.
    let state = unsafe { state(file) };
    let size = usize::try_from(size).unwrap_or(0);
    if size < state.data.len() {
        state.data.truncate(size);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_ok_int(_file: *mut ffi::sqlite3_file, _arg: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is open; `size` is writable.
    unsafe {
        *size = ffi::sqlite3_int64::try_from(state(file).data.len()).unwrap_or(i64::MAX);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: `out` is writable. One connection per file: nobody else holds a lock.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    SECTOR as c_int
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_SAFE_APPEND
        | ffi::SQLITE_IOCAP_SEQUENTIAL
        | ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    // Files live only while open; there is nothing to delete.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    // No file exists before it is opened (so SQLite never finds a hot journal).
    // SAFETY: `out` is writable.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: `name` is NUL-terminated; `out` has `n_out` bytes.
    unsafe {
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > usize::try_from(n_out).unwrap_or(0) {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len());
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_dl_open(_vfs: *mut ffi::sqlite3_vfs, _name: *const c_char) -> *mut c_void {
    std::ptr::null_mut()
}

unsafe extern "C" fn x_dl_error(_vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    let message = c"extensions cannot be loaded".to_bytes_with_nul();
    let len = message.len().min(usize::try_from(n).unwrap_or(0));
    if len > 0 {
        // SAFETY: `out` has `n` bytes; the copy is at most that, NUL-terminated below.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr().cast::<c_char>(), out, len);
            *out.add(len - 1) = 0;
        }
    }
}

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut ffi::sqlite3_vfs,
    _handle: *mut c_void,
    _symbol: *const c_char,
) -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)> {
    None
}

unsafe extern "C" fn x_dl_close(_vfs: *mut ffi::sqlite3_vfs, _handle: *mut c_void) {}

/// The default VFS, which supplies randomness, time and sleep.
///
/// # Safety
/// `vfs` must be this module's registered VFS.
unsafe fn fallback(vfs: *mut ffi::sqlite3_vfs) -> Option<&'static ffi::sqlite3_vfs> {
    // SAFETY: pAppData is the default VFS found at registration (or null); VFSs are static.
    unsafe { (*vfs).pAppData.cast::<ffi::sqlite3_vfs>().as_ref() }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: forwarded unchanged to the default VFS's own method.
    match unsafe { fallback(vfs) }.and_then(|d| d.xRandomness.map(|f| (d, f))) {
        Some((d, f)) => unsafe { f(std::ptr::from_ref(d).cast_mut(), n, out) },
        None => {
            // SAFETY: `out` has `n` bytes.
            unsafe { std::ptr::write_bytes(out, 0, usize::try_from(n).unwrap_or(0)) };
            n
        }
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: forwarded unchanged to the default VFS's own method.
    match unsafe { fallback(vfs) }.and_then(|d| d.xSleep.map(|f| (d, f))) {
        Some((d, f)) => unsafe { f(std::ptr::from_ref(d).cast_mut(), micros) },
        None => 0,
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let mut ms: ffi::sqlite3_int64 = 0;
    // SAFETY: `out` is writable; the Int64 variant is forwarded below.
    let rc = unsafe { x_current_time_int64(vfs, &raw mut ms) };
    #[allow(clippy::cast_precision_loss)]
    // SAFETY: as above.
    unsafe {
        *out = ms as f64 / 86_400_000.0;
    }
    rc
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    if let Some(ms) = PINNED_NOW_MS.with(std::cell::Cell::get) {
        // SAFETY: `out` is writable.
        unsafe {
            *out =
                i64::try_from(ms).unwrap_or(i64::MAX - UNIX_EPOCH_JULIAN_MS) + UNIX_EPOCH_JULIAN_MS;
        }
        return ffi::SQLITE_OK;
    }
    // SAFETY: forwarded unchanged to the default VFS's own method.
    let Some(d) = (unsafe { fallback(vfs) }) else {
        return ffi::SQLITE_ERROR;
    };
    let d_ptr = std::ptr::from_ref(d).cast_mut();
    if let Some(f) = d.xCurrentTimeInt64.filter(|_| d.iVersion >= 2) {
        // SAFETY: as above.
        return unsafe { f(d_ptr, out) };
    }
    let Some(f) = d.xCurrentTime else {
        return ffi::SQLITE_ERROR;
    };
    let mut days = 0.0;
    // SAFETY: as above.
    let rc = unsafe { f(d_ptr, &raw mut days) };
    #[allow(clippy::cast_possible_truncation)]
    // SAFETY: `out` is writable.
    unsafe {
        *out = (days * 86_400_000.0) as ffi::sqlite3_int64;
    }
    rc
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}
