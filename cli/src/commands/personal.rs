//! `rmb copy`, `rmb paste`, `rmb open`, `rmb trigger`, `rmb run --wait-trigger`: the
//! sending side of the personal bus's services (see [`crate::personal`]). Each targets
//! one machine of the group (`--to TWIN`) or all the others (the default).

use std::io::Read;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::bus::{Bus, twin_of};
use crate::commands::call::{self, CallSpec, Outcome};
use crate::commands::serve::exit_status_code;
use crate::personal::api::Api;
use crate::personal::group::{self, Group};
use crate::personal::{PeerArgs, clipboard, cmds, open, plugin, stream, trigger};

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
        let api = Api::new(&peer.http);
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

/// Open a web link in the browser of the group's other machines, or of one.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// An http:// or https:// URL.
    #[arg(value_name = "URL")]
    pub link: String,
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
    open::check(&args.link)?;
    let targets = Targets::resolve(&args.peer, args.to).await?;
    let outcome = targets
        .call(cmds::OPEN, args.link.into_bytes(), args.timeout)
        .await?;
    Ok(report(
        &outcome,
        "link",
        |body| match serde_json::from_slice::<open::Opened>(body) {
            Ok(o) if o.how == "browser" => "opened in the browser".into(),
            _ => "printed (no browser there)".into(),
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
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb trigger`.
pub async fn run_trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let targets = Targets::resolve(&args.peer, args.to).await?;
    let id = trigger::fire(&targets.api, &targets.group, &args.name, args.to).await?;
    eprintln!(
        "fired trigger {:?} (message {id} of {})",
        args.name,
        targets.group.topic()
    );
    Ok(ExitCode::SUCCESS)
}

/// Wait for a trigger, then run a command (exits with its status).
///
/// Example: `rmb run --wait-trigger build-done -- ./deploy.sh`
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The trigger to wait for (fired by `rmb trigger NAME` or `rmb notify --send-trigger NAME`).
    #[arg(long, value_name = "NAME")]
    pub wait_trigger: String,
    /// Give up after this many seconds (exit code 3) [default: wait forever].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub peer: PeerArgs,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs `rmb run --wait-trigger`.
pub async fn run_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    trigger::check_name(&args.wait_trigger)?;
    let targets = Targets::resolve(&args.peer, None).await?;
    eprintln!("waiting for trigger {:?}", args.wait_trigger);
    let waiting = trigger::wait(
        &targets.api,
        &targets.group,
        targets.me,
        &args.wait_trigger,
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
    eprintln!(
        "trigger {:?} fired by twin {}: running {}",
        args.wait_trigger,
        fired.by,
        args.command.join(" ")
    );
    let status = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::inherit())
        .status()
        .await
        .with_context(|| format!("cannot run {}", args.command[0]))?;
    Ok(ExitCode::from(exit_status_code(&status).min(255) as u8))
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
    let api = Api::new(&args.peer.http);
    let topic = output_topic(&args.peer, &api, &args.topic).await?;
    eprintln!(
        "following {} into {topic} (Ctrl-C to stop)",
        args.file.display()
    );
    tokio::select! {
        result = stream::follow(&api, &topic, &args.file, args.from_start) => result?,
        _ = crate::signals::stop_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `<owner>/<name>` for a topic argument; a bare `<name>` is an own topic, created when
/// missing with the personal group's machines (or only this one) as subscribers.
async fn output_topic(peer: &PeerArgs, api: &Api, topic: &str) -> anyhow::Result<String> {
    let me = api.twin().await?;
    let topic = if topic.contains('/') {
        topic.to_string()
    } else {
        format!("{me}/{topic}")
    };
    if topic.starts_with(&format!("{me}/")) && api.show(&topic).await?.is_none() {
        let bus = Bus::connect(&peer.redis.redis).await?;
        let readers: Vec<u32> = match group::load(&mut bus.conn()).await? {
            Some(g) => g.members.into_iter().collect(),
            None => vec![me],
        };
        api.configure(
            &topic,
            &serde_json::json!({ "publish": "owner", "subscribe": readers }),
        )
        .await?;
        eprintln!("created topic {topic} (subscribers: twins {readers:?})");
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
    /// A topic whose new messages are written to the program's stdin, one line each
    /// [default: none, stdin is empty].
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
    let api = Api::new(&args.peer.http);
    let topic = output_topic(&args.peer, &api, &args.topic).await?;
    let input = match &args.input {
        Some(t) if t.contains('/') => Some(t.clone()),
        Some(t) => Some(format!("{}/{t}", api.twin().await?)),
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
