//! Free disk space (`statvfs`), so a pull that cannot fit says so before it starts instead of
//! failing hours in with a full disk.

use std::path::Path;

use super::error::HubError;

/// Bytes available to an unprivileged user on the filesystem holding `dir` (which must exist),
/// or `None` where the platform cannot tell.
pub fn available_bytes(dir: &Path) -> Result<Option<u64>, HubError> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
            HubError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"),
            )
        })?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(HubError::io(dir, std::io::Error::last_os_error()));
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)] // the field widths differ between platforms
        Ok(Some(
            (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(None)
    }
}

/// Fails with [`HubError::DiskFull`] unless `needed` bytes fit in `dir`.
pub fn ensure_space(dir: &Path, needed: u64, files: usize) -> Result<(), HubError> {
    if needed == 0 {
        return Ok(());
    }
    match available_bytes(dir)? {
        Some(available) if available < needed => Err(HubError::DiskFull {
            dir: dir.to_path_buf(),
            needed,
            available,
            files,
        }),
        _ => Ok(()),
    }
}
