//! Starting processes inside a namespace and cgroup. The child joins the cgroup first (writing
//! 0 to `cgroup.procs` moves the writer), then the network namespace, then execs: every socket
//! it creates belongs to both. (`ip netns exec` would remount /sys and hide the cgroup tree.)

use std::{
    ffi::{CString, OsStr},
    fs::File,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::Path,
    process::Command,
};

/// A command that runs in network namespace `netns` (a file such as /var/run/netns/NAME) and
/// cgroup `cgroup`.
pub fn command_in(netns: &Path, cgroup: &Path, program: impl AsRef<OsStr>) -> Command {
    let ns = File::open(netns).unwrap_or_else(|e| panic!("open netns {}: {e}", netns.display()));
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).expect("cgroup path without NUL");
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (open, write, close, setns) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}
