//! The process's open-file limit: raised to its hard limit at start.
//!
//! Every connection is a file descriptor. At the soft limit (often 1 024) accepting
//! fails and logins, `/health` and federation stop together, so the relay raises the soft
//! limit to the hard one and keeps its own connection cap below it (`--max-connections`);
//! `relay-bench` raises it too, to open many idle sessions.

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft limit in force
/// afterwards (`None` where it cannot be read).
#[cfg(unix)]
#[allow(clippy::useless_conversion)] // rlim_t is not u64 on every unix
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(u64::from(limit.rlim_cur))
}

/// Elsewhere the limit is left as it is.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_raised_limit_is_readable_and_not_lowered() {
        let first = super::raise_open_file_limit().expect("readable on this machine");
        assert!(first > 0);
        assert_eq!(super::raise_open_file_limit(), Some(first));
    }
}
