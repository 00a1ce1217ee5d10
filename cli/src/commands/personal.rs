//! `rmb copy`, `rmb paste`, `rmb open`, `rmb trigger`, `rmb run --wait-trigger`: the
//! sending side of the personal bus's services (see [`rmb_personal`]). Each targets
//! one machine of the group (`--to TWIN`) or all the others (the default).

use std::io::Read;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::bus::{Bus, twin_of};
use crate::commands::call::{self, CallSpec, Outcome};
use crate::commands::serve::exit_status_code;
use rmb_personal::api::Api;
use rmb_personal::group::{self, Group};
use rmb_personal::{clipboard, cmds, open, plugin, sink, stream, trigger};

use crate::personal::PeerArgs;

/// The local peer, its twin and group, and who a command goes to.
pub struct Targets {
    /// The local Redis API.
    pub bus: Bus,
    /// The local HTTP API.
    pub api: Api,
    /// This machine's twin.
    pub me: u32,
    /// The group.
    pub group: Group,
    /// `--to TWIN` (which must be a member), or every other member.
    pub twins: Vec<u32>,
}

impl Targets {
    /// Connects and resolves `to` against the group.
    pub async fn resolve(peer: &PeerArgs, to: Option<u32>) -> anyhow::Result<Targets> {
        let bus = Bus::connect(&peer.redis.redis).await?;
        let api = peer.api();
        let me = api.twin().await?;
        let group = group::require(&mut bus.conn()).await?;
        let twins = match to {
            Some(t) if !group.admits(t) => bail!("twin {t} is not in the personal group"),
            Some(t) => vec![t],
            None => group.others(me),
        };
        Ok(Targets {
            bus,
            api,
            me,
            group,
            twins,
        })
    }

    fn require_some(&self) -> anyhow::Result<()> {
        if self.twins.is_empty() {
            bail!("the group has no other machine yet (`rmb agent invite`)");
        }
        Ok(())
    }

    async fn call(&self, cmd: &str, body: Vec<u8>, timeout: u64) -> anyhow::Result<Outcome> {
        self.require_some()?;
        call::call(
            &self.bus,
            &CallSpec {
                dst: self.twins.clone(),
                cmd: cmd.to_string(),
                body,
                schema: None,
                tag: None,
                timeout: Duration::from_secs(timeout),
            },
        )
        .await
    }
}

/// Prints each twin's answer with `describe`; the exit code (3 if one did not answer).
fn report(outcome: &Outcome, what: &str, describe: impl Fn(&[u8]) -> String) -> ExitCode {
    let mut ok = true;
    for reply in &outcome.replies {
        let twin = twin_of(&reply.src).map_or(reply.src.clone(), |t| t.to_string());
        match &reply.error {
            None => eprintln!("twin {twin}: {}", describe(&reply.body)),
            Some(e) => {
                ok = false;
                eprintln!("twin {twin} refused the {what}: {} ({})", e.message, e.code);
            }
        }
    }
    for twin in &outcome.unanswered {
        ok = false;
        eprintln!("twin {twin} did not answer (is `rmb listen` running there?)");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(call::EXIT_TIMEOUT)
    }
}

/// Put stdin (or TEXT) into the clipboard of the group's other machines, or of one.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The text; read from stdin when absent.
    pub text: Option<String>,
    /// Only this machine (twin id) of the group [default: all its other machines].
    #[arg(long, value_name = "TWIN")]
    pub to: Option<u32>,
    /// Seconds to wait for the listeners' answers.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb copy`.
pub async fn run_copy(args: CopyArgs) -> anyhow::Result<ExitCode> {
    let targets = Targets::resolve(&args.peer, args.to).await?;
    let text = match args.text {
        Some(t) => t.into_bytes(),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(clipboard::MAX_CLIPBOARD as u64 + 1)
                .read_to_end(&mut bytes)
                .context("reading stdin")?;
            bytes
        }
    };
    if text.len() > clipboard::MAX_CLIPBOARD {
        bail!(
            "clipboard text is limited to {} bytes",
            clipboard::MAX_CLIPBOARD
        );
    }
    let outcome = targets.call(cmds::COPY, text, args.timeout).await?;
    Ok(report(
        &outcome,
        "copy",
        |body| match serde_json::from_slice::<clipboard::Stored>(body) {
            Ok(s) if s.into == "file" => format!(
                "copied, kept in {} (no desktop clipboard there)",
                s.path.unwrap_or_default()
            ),
            Ok(_) => "copied to the desktop clipboard".into(),
            Err(_) => "copied".into(),
        },
    ))
}

/// Print the clipboard of one machine of the group.
#[derive(Args, Debug)]
pub struct PasteArgs {
    /// The machine (twin id) whose clipboard to print.
    #[arg(long, value_name = "TWIN")]
    pub from: u32,
    /// Seconds to wait for its answer.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb paste`.
pub async fn run_paste(args: PasteArgs) -> anyhow::Result<ExitCode> {
    let targets = Targets::resolve(&args.peer, Some(args.from)).await?;
    let outcome = targets.call(cmds::PASTE, Vec::new(), args.timeout).await?;
    match outcome.replies.first() {
        Some(reply) if reply.error.is_none() => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&reply.body)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(report(&outcome, "paste", |_| String::new())),
    }
}

/// Open a web link, or an HTML page, in the browser of the group's other machines, or of
/// one.
///
/// Examples: `rmb open https://ci.example.com/run/42 --to 7`,
/// `rmb open --html report.html`, `make-report | rmb open --html`
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// An http:// or https:// URL; with --html, a file holding the page (`-` or absent:
    /// stdin).
    #[arg(value_name = "URL|FILE", required_unless_present = "html")]
    pub target: Option<String>,
    /// Send an HTML page (at most 1 MiB): the listener writes it to a private file and
    /// opens that.
    #[arg(long)]
    pub html: bool,
    /// Only this machine (twin id) of the group [default: all its other machines].
    #[arg(long, value_name = "TWIN")]
    pub to: Option<u32>,
    /// Seconds to wait for the listeners' answers.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb open`.
pub async fn run_open(args: OpenArgs) -> anyhow::Result<ExitCode> {
    let (cmd, body, what) = if args.html {
        let mut page = Vec::new();
        let limit = open::MAX_HTML as u64 + 1;
        match args.target.as_deref() {
            None | Some("-") => std::io::stdin()
                .take(limit)
                .read_to_end(&mut page)
                .context("reading stdin")?,
            Some(file) => std::fs::File::open(file)
                .with_context(|| format!("cannot read {file}"))?
                .take(limit)
                .read_to_end(&mut page)
                .with_context(|| format!("cannot read {file}"))?,
        };
        if page.len() > open::MAX_HTML {
            bail!("an HTML page is limited to {} bytes", open::MAX_HTML);
        }
        (cmds::OPEN_HTML, page, "page")
    } else {
        let link = args.target.unwrap_or_default();
        open::check(&link)?;
        (cmds::OPEN, link.into_bytes(), "link")
    };
    let targets = Targets::resolve(&args.peer, args.to).await?;
    let outcome = targets.call(cmd, body, args.timeout).await?;
    Ok(report(
        &outcome,
        what,
        |body| match serde_json::from_slice::<open::Opened>(body) {
            Ok(o) => match (o.how.as_str(), o.path) {
                ("browser", None) => "opened in the browser".into(),
                ("browser", Some(path)) => format!("opened in the browser ({path})"),
                (_, None) => "printed (no browser there)".into(),
                (_, Some(path)) => format!("kept in {path} (no browser there)"),
            },
            Err(_) => "printed (no browser there)".into(),
        },
    ))
}

/// Fire a trigger: every `rmb run --wait-trigger NAME` of the group (or of one machine) runs.
#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// The trigger's name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Only waiters on this machine (twin id) run [default: waiters on every machine].
    #[arg(long, value_name = "TWIN")]
    pub to: Option<u32>,
    /// Report a failure: waiters do not run their command (unless --run-on-failure).
    #[arg(long)]
    pub failed: bool,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb trigger`.
pub async fn run_trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let targets = Targets::resolve(&args.peer, args.to).await?;
    let outcome = trigger::Outcome {
        success: !args.failed,
        exit_code: None,
    };
    let id = trigger::fire(&targets.api, &targets.group, &args.name, args.to, outcome).await?;
    eprintln!(
        "fired trigger {:?}{} (message {id} of {})",
        args.name,
        if args.failed {
            ", reporting failure"
        } else {
            ""
        },
        targets.group.topic()
    );
    Ok(ExitCode::SUCCESS)
}

/// Exit status of `rmb run --wait-trigger` when the trigger reported a failure (and
/// --run-on-failure was not given): the command did not run.
pub const EXIT_TRIGGER_FAILED: u8 = 4;

/// Run a command after a trigger (`--wait-trigger`), and/or fire one when it ends
/// (`--send-trigger`); exits with the command's status.
///
/// A trigger reports whether the work that fired it succeeded. When it reports a failure
/// the command is not run and the exit status is 4, unless --run-on-failure. The command
/// sees RMB_TRIGGER (the name), RMB_TRIGGER_SUCCESS (1 or 0) and RMB_TRIGGER_BY (the
/// twin that fired it).
///
/// Examples: `rmb run --wait-trigger build-done -- ./deploy.sh`,
/// `rmb run --wait-trigger built --send-trigger deployed -- ./deploy.sh`
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("trigger").required(true).multiple(true).args(["wait_trigger", "send_trigger"])))]
pub struct RunArgs {
    /// The trigger to wait for (fired by `rmb trigger NAME` or `--send-trigger NAME`);
    /// one that reports a failure does not run the command (exit code 4).
    #[arg(long, value_name = "NAME")]
    pub wait_trigger: Option<String>,
    /// Give up waiting after this many seconds (exit code 3) [default: wait forever].
    #[arg(long, value_name = "SECS", requires = "wait_trigger")]
    pub timeout: Option<u64>,
    /// Run the command even when the trigger reports a failure.
    #[arg(long, requires = "wait_trigger")]
    pub run_on_failure: bool,
    /// When the command succeeds, fire this trigger on the personal group.
    #[arg(long, value_name = "NAME")]
    pub send_trigger: Option<String>,
    /// Fire --send-trigger when the command fails too (reporting the failure).
    #[arg(long, requires = "send_trigger")]
    pub trigger_always: bool,
    #[command(flatten)]
    pub peer: PeerArgs,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs `rmb run`.
pub async fn run_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    for name in args.wait_trigger.iter().chain(&args.send_trigger) {
        trigger::check_name(name)?;
    }
    let targets = Targets::resolve(&args.peer, None).await?;
    let mut command = tokio::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]).stdin(Stdio::inherit());
    if let Some(name) = &args.wait_trigger {
        eprintln!("waiting for trigger {name:?}");
        let waiting = trigger::wait(
            &targets.api,
            &targets.group,
            targets.me,
            name,
            args.timeout.map(Duration::from_secs),
        );
        let fired = tokio::select! {
            fired = waiting => fired,
            _ = crate::signals::stop_signal() => return Ok(ExitCode::from(130)),
        };
        let fired = match fired {
            Ok(f) => f,
            Err(e @ trigger::TriggerError::TimedOut(..)) => {
                eprintln!("rmb: {e}");
                return Ok(ExitCode::from(call::EXIT_TIMEOUT));
            }
            Err(e) => return Err(e.into()),
        };
        let how = if fired.outcome.success {
            String::new()
        } else {
            match fired.outcome.exit_code {
                Some(code) => format!(", reporting a failure (exit code {code})"),
                None => ", reporting a failure".into(),
            }
        };
        if !fired.outcome.success && !args.run_on_failure {
            eprintln!(
                "rmb: trigger {name:?} fired by twin {}{how}: not running {} \
                 (--run-on-failure runs it)",
                fired.by,
                args.command.join(" ")
            );
            return Ok(ExitCode::from(EXIT_TRIGGER_FAILED));
        }
        eprintln!(
            "trigger {name:?} fired by twin {}{how}: running {}",
            fired.by,
            args.command.join(" ")
        );
        command
            .env("RMB_TRIGGER", name)
            .env(
                "RMB_TRIGGER_SUCCESS",
                if fired.outcome.success { "1" } else { "0" },
            )
            .env("RMB_TRIGGER_BY", fired.by.to_string());
    }
    let status = command
        .status()
        .await
        .with_context(|| format!("cannot run {}", args.command[0]))?;
    let exit_code = exit_status_code(&status);
    if let Some(name) = &args.send_trigger {
        let outcome = trigger::Outcome {
            success: status.success(),
            exit_code: Some(exit_code),
        };
        let after = trigger::fire_after(
            &targets.api,
            Some(&targets.group),
            name,
            outcome,
            args.trigger_always,
        )
        .await;
        crate::personal::print_after_command(name, &after);
    }
    Ok(ExitCode::from(exit_code.min(255) as u8))
}

/// Follow a file like `tail -F` (surviving rotation) and publish each line to a topic.
///
/// Example: `rmb stream /var/log/syslog --topic syslog`, and elsewhere `rmb sub 7/syslog`.
#[derive(Args, Debug)]
pub struct StreamArgs {
    /// The file to follow (it may not exist yet).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// `<owner>/<name>`, or `<name>` for an own topic, created when missing with the
    /// personal group's machines as its subscribers.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Publish what the file already holds first [default: only lines added from now].
    #[arg(long)]
    pub from_start: bool,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb stream`.
pub async fn run_stream(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let api = args.peer.api();
    let topic = own_topic(&args.peer, &api, &args.topic, Direction::Out).await?;
    eprintln!(
        "following {} into {topic} (Ctrl-C to stop)",
        args.file.display()
    );
    if !args.file.exists() {
        eprintln!("{} does not exist yet; waiting for it", args.file.display());
    }
    tokio::select! {
        result = stream::follow(&api, &topic, &args.file, args.from_start) => result?,
        _ = crate::signals::stop_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Write a topic's messages into a named pipe or a file, the counterpart of `rmb stream`.
///
/// A named pipe (made with `mkfifo`) is written while a reader has it open; between
/// readers, messages wait. Any other path is a file, created if missing and appended to.
/// Each message is written followed by a newline (unless it ends with one).
///
/// Example: `mkfifo /tmp/app-log; rmb sink /tmp/app-log --topic 9/app-log &
/// grep --line-buffered ERROR /tmp/app-log`
#[derive(Args, Debug)]
pub struct SinkArgs {
    /// The named pipe or file to write to.
    #[arg(value_name = "PATH")]
    pub path: std::path::PathBuf,
    /// `<owner>/<name>`, or `<name>` for an own topic, created when missing with the
    /// personal group's machines as its publishers and subscribers.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Write the messages the topic holds first [default: only those published from now].
    #[arg(long)]
    pub from_start: bool,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb sink`.
pub async fn run_sink(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let api = args.peer.api();
    let topic = own_topic(&args.peer, &api, &args.topic, Direction::In).await?;
    eprintln!(
        "writing {topic} into {} (Ctrl-C to stop)",
        args.path.display()
    );
    tokio::select! {
        result = sink::drain(&api, &topic, &args.path, args.from_start) => result?,
        _ = crate::signals::stop_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Which way an own topic that `rmb` creates carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// This machine publishes; the group reads (`rmb stream`, a plugin's output).
    Out,
    /// The group publishes; this machine reads (a plugin's input, `rmb sink`).
    In,
}

/// `<owner>/<name>` for a topic argument; a bare `<name>` is an own topic. An own topic
/// that does not exist yet is created: subscribers are the personal group's machines (or
/// only this one without a group), publishers this machine alone for [`Direction::Out`]
/// and the group's machines for [`Direction::In`].
async fn own_topic(
    peer: &PeerArgs,
    api: &Api,
    topic: &str,
    direction: Direction,
) -> anyhow::Result<String> {
    let me = api.twin().await?;
    let topic = if topic.contains('/') {
        topic.to_string()
    } else {
        format!("{me}/{topic}")
    };
    if topic.starts_with(&format!("{me}/")) && api.show(&topic).await?.is_none() {
        let bus = Bus::connect(&peer.redis.redis).await?;
        let members: Vec<u32> = match group::load(&mut bus.conn()).await? {
            Some(g) => g.members.into_iter().collect(),
            None => vec![me],
        };
        let publish = match direction {
            Direction::Out => serde_json::json!("owner"),
            Direction::In => serde_json::json!(members),
        };
        api.configure(
            &topic,
            &serde_json::json!({ "publish": publish, "subscribe": members }),
        )
        .await?;
        match direction {
            Direction::Out => eprintln!("created topic {topic} (subscribers: twins {members:?})"),
            Direction::In => {
                eprintln!("created topic {topic} (publishers and subscribers: twins {members:?})")
            }
        }
    }
    Ok(topic)
}

/// Run a long-lived program: its output lines are published to a topic, and messages of
/// another topic are fed to its input (one line each). Exits with its status.
///
/// Example: `rmb plugin --topic temps --input 7/commands -- ./sensor.py`
#[derive(Args, Debug)]
pub struct PluginArgs {
    /// Where the program's output lines go: `<owner>/<name>`, or `<name>` for an own topic
    /// (created when missing, readable by the personal group).
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// A topic whose new messages are written to the program's stdin, one line each:
    /// `<owner>/<name>`, or `<name>` for an own topic (created when missing, the personal
    /// group may publish to it) [default: none, stdin is empty].
    #[arg(long, value_name = "TOPIC")]
    pub input: Option<String>,
    #[command(flatten)]
    pub peer: PeerArgs,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

/// Runs `rmb plugin`.
pub async fn run_plugin(args: PluginArgs) -> anyhow::Result<ExitCode> {
    let api = args.peer.api();
    let topic = own_topic(&args.peer, &api, &args.topic, Direction::Out).await?;
    let input = match &args.input {
        Some(t) => Some(own_topic(&args.peer, &api, t, Direction::In).await?),
        None => None,
    };
    eprintln!(
        "running {} with its output to {topic}{}",
        args.program.join(" "),
        input
            .as_ref()
            .map(|i| format!(" and {i} as its input"))
            .unwrap_or_default()
    );
    let status = tokio::select! {
        status = plugin::run(&api, &topic, input.as_deref(), &args.program) => status?,
        _ = crate::signals::stop_signal() => return Ok(ExitCode::from(130)),
    };
    Ok(ExitCode::from(exit_status_code(&status).min(255) as u8))
}
