//! The demo's step-by-step report: a spinner while a step runs, one line per finished
//! step with its timing, and the same facts as JSON for scripts.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// One finished step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was done, in words.
    pub name: String,
    /// Whether it worked.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// Extra facts (an address, a reply) or why it failed.
    pub detail: Option<String>,
}

/// Collects steps; shows progress to a person unless `json` is set.
pub struct Reporter {
    json: bool,
    steps: Vec<Step>,
    spinner: Option<ProgressBar>,
    current: Option<(String, Instant)>,
}

impl Reporter {
    /// A reporter for people (`json == false`) or scripts.
    pub fn new(json: bool) -> Reporter {
        Reporter {
            json,
            steps: Vec::new(),
            spinner: None,
            current: None,
        }
    }

    /// True for machine output.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Starts a step (shows a spinner with its name on a terminal).
    pub fn begin(&mut self, name: impl Into<String>) {
        let name = name.into();
        if !self.json {
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                    .expect("valid template"),
            );
            spinner.set_message(name.clone());
            spinner.enable_steady_tick(Duration::from_millis(100));
            self.spinner = Some(spinner);
        }
        self.current = Some((name, Instant::now()));
    }

    /// Ends the current step.
    pub fn end(&mut self, ok: bool, detail: Option<String>) {
        let Some((name, started)) = self.current.take() else {
            return;
        };
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
        let step = Step {
            name,
            ok,
            ms: started.elapsed().as_millis() as u64,
            detail,
        };
        if !self.json {
            println!("{}", format_step(&step));
        }
        self.steps.push(step);
    }

    /// Runs `f` as a step named `name`; its `Ok` text becomes the detail.
    pub async fn step<T, F>(&mut self, name: impl Into<String>, f: F) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<(T, Option<String>)>>,
    {
        self.begin(name);
        match f.await {
            Ok((value, detail)) => {
                self.end(true, detail);
                Ok(value)
            }
            Err(e) => {
                self.end(false, Some(format!("{e:#}")));
                Err(e)
            }
        }
    }

    /// Prints a line for people (nothing in JSON mode), above the spinner if one runs.
    pub fn say(&self, text: &str) {
        if self.json {
            return;
        }
        match &self.spinner {
            Some(spinner) => spinner.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// Every step so far.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Marks an unfinished step as interrupted (Ctrl-C during set-up).
    pub fn interrupt(&mut self) {
        if self.current.is_some() {
            self.end(false, Some("interrupted".into()));
        }
    }
}

/// `  ✓ name  (detail)  123 ms` — failures get ✗ and their reason on the next lines.
pub fn format_step(step: &Step) -> String {
    let mark = if step.ok { "✓" } else { "✗" };
    let mut line = format!("  {mark} {:<58} {:>6} ms", step.name, step.ms);
    if let Some(detail) = &step.detail {
        let indent = if step.ok { "      " } else { "      error: " };
        for (i, l) in detail.lines().enumerate() {
            line.push('\n');
            line.push_str(if i == 0 { indent } else { "      " });
            line.push_str(l);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_show_mark_timing_and_detail() {
        let ok = Step {
            name: "relay A".into(),
            ok: true,
            ms: 12,
            detail: Some("ws://127.0.0.1:1/".into()),
        };
        let text = format_step(&ok);
        assert!(text.starts_with("  ✓ relay A"), "{text}");
        assert!(text.contains("12 ms\n      ws://127.0.0.1:1/"), "{text}");
        let failed = Step {
            ok: false,
            detail: Some("boom\nmore".into()),
            ..ok
        };
        let text = format_step(&failed);
        assert!(
            text.contains("✗") && text.contains("error: boom\n      more"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failing_step_is_recorded_with_its_reason() {
        let mut reporter = Reporter::new(true);
        let ok: anyhow::Result<u8> = reporter.step("one", async { Ok((1, None)) }).await;
        assert_eq!(ok.unwrap(), 1);
        let failed: anyhow::Result<u8> = reporter
            .step("two", async { Err(anyhow::anyhow!("no luck")) })
            .await;
        assert!(failed.is_err());
        let steps = reporter.steps();
        assert_eq!((steps[0].ok, steps[1].ok), (true, false));
        assert_eq!(steps[1].detail.as_deref(), Some("no luck"));
    }
}
