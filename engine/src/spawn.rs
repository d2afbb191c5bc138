//! Starting a program straight into a step's cgroup without copying qflow's
//! memory.
//!
//! A program must be in its step's cgroup before its first instruction (so
//! nothing it starts can escape it), and the standard library can only get it
//! there with a hook between fork and exec, which makes it `fork`: a copy of
//! qflow's page tables that the child's `exec` throws away again, both
//! proportional to qflow's memory. At 10,000 steps that was most of a run's
//! CPU. Here the child is created by `clone3` with `CLONE_INTO_CGROUP` (it is
//! born a member), `CLONE_VM | CLONE_VFORK` (it borrows qflow's memory, and
//! the calling thread waits until it has called `exec` or exited, as
//! `posix_spawn` does) and `CLONE_CLEAR_SIGHAND` (none of qflow's signal
//! handlers can run in it). This is what glibc 2.39's
//! `posix_spawnattr_setcgroup_np` does; older glibc has no such attribute.
//!
//! Everything the child needs (argv, environment, the paths `exec` tries,
//! working directory) is built here beforehand; the child only makes system
//! calls: SIGPIPE back to its default, an empty signal mask, a process group of
//! its own, its stdio, its working directory, `execve`. If that fails it leaves
//! the error number in memory it shares with the caller and exits 127.
//!
//! [`spawn_in_cgroup`] answers `None` where this cannot work (a kernel before
//! 5.7, a seccomp filter that refuses `clone3`, an architecture other than
//! x86-64): the caller then starts the program through the standard library.
//! Only the environment changes, program, arguments and working directory of a
//! `Command` are honoured: a `Command` with a `pre_exec` hook, `env_clear`,
//! `uid` or `arg0` must go through the standard library.
//!
//! Imports nothing of the engine.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set once `clone3` turned out not to take these flags on this kernel.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The child's own stack: it runs on it while the calling thread waits.
const STACK_BYTES: usize = 32 * 1024;

/// Start `cmd` with `stdio` as its stdin, stdout and stderr, as a member of the
/// cgroup whose directory `cgroup` is open on, in a process group of its own.
/// Returns its pid (a child of the caller, to be reaped with `wait4`), `None`
/// when this host cannot start it this way, or the error `exec` (or a step
/// before it) reported.
pub fn spawn_in_cgroup(
    cmd: &Command,
    stdio: [BorrowedFd<'_>; 3],
    cgroup: BorrowedFd<'_>,
) -> io::Result<Option<libc::pid_t>> {
    if !cfg!(target_arch = "x86_64") || UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let plan = Prepared::new(cmd, stdio)?;
    // Only the child writes it, before it reads it.
    let mut stack = std::mem::MaybeUninit::<Stack>::uninit();
    let child = ChildPlan {
        exec_paths: plan.exec_ptrs.as_ptr(),
        argv: plan.argv_ptrs.as_ptr(),
        envp: plan.envp_ptrs.as_ptr(),
        cwd: plan.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio: plan.stdio,
        empty_mask: empty_sigset(),
        err: AtomicI32::new(0),
    };
    let mut args = CloneArgs {
        flags: CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: STACK_BYTES as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` describes a stack that lives until the call returns, and
    // CLONE_VFORK makes the call return only once the child has called `exec`
    // or exited: until then it alone uses that stack and reads `child`, and it
    // writes nothing of ours but `child.err`. Everything `child_main` reads was
    // built above and outlives the call.
    let ret = unsafe { clone3_run(&mut args, &child as *const ChildPlan as *mut libc::c_void) };
    if ret < 0 {
        let errno = -ret as i32;
        return match errno {
            // A kernel without clone3 (5.3), without CLONE_CLEAR_SIGHAND (5.5)
            // or without CLONE_INTO_CGROUP (5.7), or a filter that hides them.
            libc::ENOSYS | libc::E2BIG | libc::EINVAL => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                Ok(None)
            }
            // A cgroup this process may not create children in this way: the
            // standard library's path says why, if it cannot either.
            libc::EPERM | libc::EACCES | libc::EBADF | libc::EOPNOTSUPP => Ok(None),
            _ => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    let pid = ret as libc::pid_t;
    let err = child.err.load(Ordering::Acquire);
    if err != 0 {
        // The child has exited already (CLONE_VFORK): reap it so no zombie stays.
        let mut status = 0;
        // SAFETY: waitpid(2) writes only `status`.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(Some(pid))
}

/// The C strings and pointer arrays the child reads, built before it exists.
struct Prepared {
    _exec_paths: Vec<CString>,
    exec_ptrs: Vec<*const libc::c_char>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdio: [RawFd; 3],
    /// Copies of stdio descriptors below 3, so that no `dup2` in the child
    /// overwrites another's source.
    _moved: Vec<OwnedFd>,
}

impl Prepared {
    fn new(cmd: &Command, stdio: [BorrowedFd<'_>; 3]) -> io::Result<Prepared> {
        let program = cmd.get_program();
        let mut argv = vec![cstring(program.as_bytes())?];
        for a in cmd.get_args() {
            argv.push(cstring(a.as_bytes())?);
        }
        let env = environment(cmd);
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in &env {
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstring(&kv)?);
        }
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let exec_paths = exec_candidates(program, path)?;
        let cwd = match cmd.get_current_dir() {
            Some(d) => Some(cstring(d.as_os_str().as_bytes())?),
            None => None,
        };
        let mut moved = Vec::new();
        let mut fds = [0; 3];
        for (slot, fd) in fds.iter_mut().zip(stdio) {
            let mut raw = fd.as_raw_fd();
            if raw < 3 {
                // SAFETY: fcntl(2) F_DUPFD_CLOEXEC makes a new descriptor we own.
                let copy = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) };
                if copy < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `copy` is a fresh descriptor nobody else owns.
                moved.push(unsafe { OwnedFd::from_raw_fd(copy) });
                raw = copy;
            }
            *slot = raw;
        }
        Ok(Prepared {
            exec_ptrs: pointers(&exec_paths),
            _exec_paths: exec_paths,
            argv_ptrs: pointers(&argv),
            _argv: argv,
            envp_ptrs: pointers(&envp),
            _envp: envp,
            cwd,
            stdio: fds,
            _moved: moved,
        })
    }
}

/// The environment `cmd` gives its program: qflow's, changed as `cmd` says.
fn environment(cmd: &Command) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in cmd.get_envs() {
        env.retain(|(name, _)| name != k);
        if let Some(v) = v {
            env.push((k.to_os_string(), v.to_os_string()));
        }
    }
    env
}

/// The paths `exec` tries for `program`, in order: itself when it names a
/// path, else each directory of `PATH` (`execvp`'s `/bin:/usr/bin` without
/// one; an empty entry is the working directory).
fn exec_candidates(program: &OsStr, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    let name = program.as_bytes();
    if name.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if name.contains(&b'/') {
        return Ok(vec![cstring(name)?]);
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
    path.split(|b| *b == b':')
        .map(|dir| {
            if dir.is_empty() {
                return cstring(name);
            }
            let mut full = Vec::with_capacity(dir.len() + 1 + name.len());
            full.extend_from_slice(dir);
            if !dir.ends_with(b"/") {
                full.push(b'/');
            }
            full.extend_from_slice(name);
            cstring(&full)
        })
        .collect()
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or environment variable holds a nul byte",
        )
    })
}

/// A null-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    ptrs
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid; sigemptyset(3) only writes it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// What the child reads: raw pointers into a [`Prepared`] that outlives it.
struct ChildPlan {
    exec_paths: *const *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    empty_mask: libc::sigset_t,
    /// The error number the child failed with; 0 while it did not.
    err: AtomicI32,
}

#[repr(C, align(16))]
struct Stack([u8; STACK_BYTES]);

/// The kernel's `struct clone_args` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child: runs on its own stack in qflow's memory until `execve`. Only
/// system calls, no allocation, no lock, nothing that can panic; and no lazy
/// symbol binding either (rustc links with `-z now`).
extern "C" fn child_main(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `ChildPlan` the parent keeps alive while it waits.
    let plan = unsafe { &*(arg as *const ChildPlan) };
    // SAFETY: each call is an async-signal-safe system call on data the
    // parent prepared; see `spawn_in_cgroup`.
    let errno = unsafe { prepare_and_exec(plan) };
    plan.err.store(errno, Ordering::Release);
    // SAFETY: _exit(2) ends this child only; no destructor or atexit handler runs.
    unsafe { libc::_exit(127) }
}

/// Set the child up as the standard library would and `execve` the program;
/// returns the error number of what failed.
unsafe fn prepare_and_exec(plan: &ChildPlan) -> i32 {
    let errno = || unsafe { *libc::__errno_location() };
    unsafe {
        // qflow ignores SIGPIPE; programs expect its default. Handlers are gone
        // already (CLONE_CLEAR_SIGHAND); the mask becomes empty.
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
            || libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut()) != 0
            || libc::setpgid(0, 0) != 0
        {
            return errno();
        }
        for (target, src) in plan.stdio.iter().enumerate() {
            if libc::dup2(*src, target as libc::c_int) < 0 {
                return errno();
            }
        }
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            return errno();
        }
        // As execvp(3): the first path that exists and may be run; EACCES
        // is reported only if no later one works.
        let mut denied = false;
        let mut path = plan.exec_paths;
        while !(*path).is_null() {
            libc::execve(*path, plan.argv, plan.envp);
            match errno() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                other => return other,
            }
            path = path.add(1);
        }
        if denied { libc::EACCES } else { libc::ENOENT }
    }
}

/// `clone3(args)`; the child calls `child_main(arg)` on the stack `args`
/// names. Returns the child's pid or minus the error number.
///
/// # Safety
/// `args` must name a stack that stays untouched by anyone else until the
/// call returns, and flags with which the child cannot return here (it starts
/// on that stack, with no frame to return to).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_run(args: &mut CloneArgs, arg: *mut libc::c_void) -> i64 {
    let ret: i64;
    let entry: extern "C" fn(*mut libc::c_void) -> ! = child_main;
    // SAFETY: the caller's contract. In the parent the syscall returns the
    // pid (or an error) with every register but rax, rcx and r11 kept. In the
    // child rax is 0 and rsp the top of the new stack (16-byte aligned, so the
    // `call` leaves it as the ABI wants); r12 and r13 still hold the argument
    // and the entry point, which never returns.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_run(_args: &mut CloneArgs, _arg: *mut libc::c_void) -> i64 {
    -(libc::ENOSYS as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::StepCgroup;
    use std::io::Read as _;
    use std::os::fd::AsFd;

    /// A cgroup for one test, or `None` (and a note) on a host without one.
    fn cgroup(name: &str) -> Option<StepCgroup> {
        let cg = StepCgroup::create(&format!("spawn-test-{name}-{}", std::process::id()));
        if cg.is_none() {
            eprintln!("no cgroup2 hierarchy qflow may use here: nothing to test");
        }
        cg
    }

    /// Run `cmd` in `cg` with stdout and stderr to one pipe; its output and exit status.
    fn run(cmd: &Command, cg: &StepCgroup) -> io::Result<(String, i32)> {
        let (mut reader, writer) = io::pipe()?;
        let null = std::fs::File::open("/dev/null")?;
        let pid = spawn_in_cgroup(
            cmd,
            [null.as_fd(), writer.as_fd(), writer.as_fd()],
            cg.dir_fd(),
        )?
        .expect("clone3 with CLONE_INTO_CGROUP on this kernel");
        drop(writer);
        let mut out = String::new();
        reader.read_to_string(&mut out)?;
        let mut status = 0;
        // SAFETY: waitpid(2) writes only `status`.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        Ok((out, status))
    }

    #[test]
    fn a_program_is_in_its_steps_cgroup_from_its_first_instruction() {
        let Some(cg) = cgroup("first") else { return };
        // `cat` reads its own /proc/self/cgroup: the first thing it does.
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/cgroup");
        let (out, status) = run(&cmd, &cg).unwrap();
        cg.kill_and_remove();
        assert_eq!(status, 0, "{out}");
        let name = cg.dir().file_name().unwrap().to_string_lossy().into_owned();
        let v2 = out
            .lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default();
        assert!(v2.ends_with(&format!("/qflow/{name}")), "{out}");
    }

    #[test]
    fn a_missing_program_fails_with_no_such_file_and_leaves_no_zombie() {
        let Some(cg) = cgroup("missing") else { return };
        let err = run(&Command::new("qflow-no-such-program"), &cg).unwrap_err();
        let relative = run(&Command::new("./qflow-no-such-program"), &cg).unwrap_err();
        cg.kill_and_remove();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(relative.kind(), io::ErrorKind::NotFound, "{relative}");
        // This thread started no other child; a zombie would still be listed.
        let children = std::fs::read_to_string("/proc/thread-self/children").unwrap();
        assert_eq!(children.trim(), "", "a child was left to reap");
    }

    #[test]
    fn arguments_environment_directory_and_stdio_are_the_commands() {
        let Some(cg) = cgroup("setup") else { return };
        let dir = std::env::temp_dir();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo \"arg=$0 var=$QFLOW_SPAWN_TEST home=${HOME-unset} pwd=$(pwd)\"; \
             echo to-stderr >&2; \
             read -r line || echo stdin-empty",
            "first arg",
        ]);
        cmd.env("QFLOW_SPAWN_TEST", "a value")
            .env_remove("HOME")
            .current_dir(&dir);
        let (out, status) = run(&cmd, &cg).unwrap();
        cg.kill_and_remove();
        assert_eq!(status, 0, "{out}");
        let pwd = dir.canonicalize().unwrap();
        assert!(
            out.contains(&format!(
                "arg=first arg var=a value home=unset pwd={}",
                pwd.display()
            )),
            "{out}"
        );
        assert!(out.contains("to-stderr\nstdin-empty\n"), "{out}");
    }

    #[test]
    fn a_program_starts_in_a_process_group_it_leads_with_sigpipe_at_its_default() {
        let Some(cg) = cgroup("group") else { return };
        let mut cmd = Command::new("sh");
        // Fields 5 (pgrp) and 1 (pid) of the shell's own stat, and its ignored signals.
        cmd.args([
            "-c",
            "read -r pid _ _ _ pgrp _ < /proc/$$/stat; echo \"$pid $pgrp\"; grep SigIgn /proc/$$/status",
        ]);
        let (out, status) = run(&cmd, &cg).unwrap();
        cg.kill_and_remove();
        assert_eq!(status, 0, "{out}");
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(
            ids[0], ids[1],
            "the shell leads its own process group: {out}"
        );
        let ignored = u64::from_str_radix(lines.next().unwrap().split('\t').nth(1).unwrap(), 16);
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(
            ignored.unwrap() & sigpipe,
            0,
            "SIGPIPE still ignored: {out}"
        );
    }
}
