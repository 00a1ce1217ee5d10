//! Stopping the processes the tests start, the way an operator would.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// SIGKILLs the child, if still running, and reaps it.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERMs the child and returns its exit status (graceful shutdown), killing it after
/// 15 s if it has not exited by then.
pub fn terminate(child: &mut Option<Child>) -> Option<ExitStatus> {
    let mut child = child.take()?;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}
