//! Mounting a workspace: the checks before the mount and the session after it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::fuse::{Negotiated, OverlayFs, ServeOptions, fuse_config};
use crate::overlay::OverlayOptions;
use crate::workspace::{MountLock, Workspace, is_mount_point};

/// A mounted workspace whose requests are not served yet.
pub struct Mounted {
    session: fuser::Session<OverlayFs>,
    negotiated: Arc<Mutex<Negotiated>>,
    mountpoint: PathBuf,
    _lock: MountLock,
}

/// Checks that `mountpoint` can take a mount of a workspace over `base`.
pub fn check_mountpoint(mountpoint: &Path, base: &Path) -> Result<PathBuf> {
    let meta = match std::fs::metadata(mountpoint) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MountpointMissing {
                path: mountpoint.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(Error::MountpointBusy {
                path: mountpoint.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if !meta.is_dir() {
        return Err(Error::MountpointBusy {
            path: mountpoint.to_path_buf(),
            reason: "it is not a directory".into(),
        });
    }
    let canon = mountpoint
        .canonicalize()
        .map_err(|e| Error::io(mountpoint, e))?;
    if is_mount_point(&canon) {
        return Err(Error::MountpointBusy {
            path: canon,
            reason:
                "something is already mounted there; unmount it first (umount or fusermount3 -u)"
                    .into(),
        });
    }
    let non_empty = std::fs::read_dir(&canon)
        .map_err(|e| Error::io(&canon, e))?
        .next()
        .is_some();
    if non_empty {
        return Err(Error::MountpointBusy {
            path: canon,
            reason: "the directory is not empty; mount on an empty directory".into(),
        });
    }
    if canon.starts_with(base) {
        return Err(Error::MountpointInsideBase {
            mountpoint: canon,
            base: base.to_path_buf(),
        });
    }
    Ok(canon)
}

/// Mounts `ws` at `mountpoint`. Requests are served by [`Mounted::run`].
pub fn mount(ws: &Workspace, mountpoint: &Path, opts: &ServeOptions) -> Result<Mounted> {
    let base = {
        let conn = ws.connect_read_only()?;
        ws.base_path(&conn)?
    };
    if !base.is_dir() {
        return Err(Error::BaseMissing { path: base });
    }
    let mountpoint = check_mountpoint(mountpoint, &base)?;
    let lock = ws.lock()?;
    let overlay = ws.overlay(
        &lock,
        OverlayOptions {
            passthrough: opts.passthrough,
        },
    )?;
    let fs = OverlayFs::new(overlay, opts);
    let negotiated = fs.negotiated();
    let mut opts = opts.clone();
    if opts.fs_name == "cordon" {
        opts.fs_name = format!("cordon:{}", ws.id);
    }
    let session = fuser::Session::new(fs, &mountpoint, &fuse_config(&opts)).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "; mounting needs root, or the fuse3 package (fusermount3) and access to /dev/fuse"
            }
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                "; the fuse kernel module or /dev/fuse is missing (modprobe fuse)"
            }
            _ => "",
        };
        Error::Mount {
            path: mountpoint.clone(),
            source: e,
            hint,
        }
    })?;
    Ok(Mounted {
        session,
        negotiated,
        mountpoint,
        _lock: lock,
    })
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Features the kernel agreed to (valid once the first request arrived).
    pub fn negotiated(&self) -> Arc<Mutex<Negotiated>> {
        self.negotiated.clone()
    }

    /// A handle that unmounts from another thread (e.g. a signal handler thread).
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests on this thread until the file system is unmounted.
    pub fn run(self) -> Result<()> {
        let mountpoint = self.mountpoint.clone();
        let lock = self._lock;
        let r = self.session.run();
        drop(lock);
        r.map_err(|e| Error::io(mountpoint, e))
    }

    /// Serves requests on a background thread; dropping the handle unmounts.
    pub fn spawn(self) -> Result<BackgroundMount> {
        let mountpoint = self.mountpoint.clone();
        let session = self
            .session
            .spawn()
            .map_err(|e| Error::io(&mountpoint, e))?;
        Ok(BackgroundMount {
            session: Some(session),
            mountpoint,
            _lock: self._lock,
        })
    }
}

/// A mount served by a background thread.
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    _lock: MountLock,
}

impl BackgroundMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the server thread.
    pub fn unmount(mut self) -> Result<()> {
        if let Some(s) = self.session.take() {
            s.umount_and_join()
                .map_err(|e| Error::io(&self.mountpoint, e))?;
        }
        Ok(())
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
