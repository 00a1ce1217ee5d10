//! rmb-config: `--config FILE` for the rmb binaries (`rmb-relay`, `rmb-peer`).
//!
//! Every long flag of a binary is also a key of a TOML file, spelt as the flag without its
//! dashes (`max-connections-per-ip = 0`, `relay = ["wss://a", "wss://b"]`,
//! `federation-http = true`). Precedence, per setting: the command line, then the flag's
//! environment variable, then the file, then the built-in default.
//!
//! Why it is built this way: clap stays the only parser. The command line is parsed once
//! to learn which arguments the user (or the environment) gave and where the file is;
//! the file's other settings are turned into the flags they stand for and put before the
//! user's arguments; clap then parses the whole again. Keys are looked up in the
//! `clap::Command` itself, and each value goes through the argument's own value parser
//! first, so a key cannot drift from its flag and a bad value is reported with the file,
//! line and key it came from.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml_edit::{Item, Value};

/// The id and long name of the argument added to each binary: `--config PATH`.
const CONFIG: &str = "config";

/// The binary's command (`T::command()`) with `--config` added: what [`parse`] parses
/// and `--help` shows, public so that tests can render that help.
pub fn command<T: CommandFactory>() -> Command {
    T::command().arg(config_arg())
}

/// Parses the process's arguments into `T`, with the settings of the `--config` file
/// where neither the command line nor an environment variable gave them. On an error
/// (a bad flag, an unreadable file, an unknown key, a bad value) prints it and exits
/// non-zero, as clap does, before the binary starts anything.
///
/// `secret_keys` are long names whose values are secrets (a mnemonic, a URL that may
/// hold a password): when the file sets one and other users may read it, a warning
/// says to make it mode 0600.
pub fn parse<T: FromArgMatches + CommandFactory>(secret_keys: &[&str]) -> T {
    try_parse_from(std::env::args_os(), secret_keys).unwrap_or_else(|e| e.exit())
}

/// [`parse`] on the given arguments (the first is the program name), returning the error
/// instead of exiting: for tests, and for callers that report errors themselves.
pub fn try_parse_from<T, I, A>(args: I, secret_keys: &[&str]) -> Result<T, clap::Error>
where
    T: FromArgMatches + CommandFactory,
    I: IntoIterator<Item = A>,
    A: Into<OsString>,
{
    let mut cmd = command::<T>();
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut matches = merged_matches(&mut cmd, args, secret_keys)?;
    T::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
}

/// Checks a shipped example file against the binary's command, so that it cannot rot:
/// the file loads as it is; it loads with every commented-out setting (a line
/// `# key = value`) uncommented too; and each such commented value of a flag that has a
/// built-in default is that default. Returns every problem found, one per line.
pub fn check_example<T: CommandFactory>(text: &str) -> Result<(), String> {
    let mut cmd = command::<T>();
    cmd.build();
    let mut problems = Vec::new();
    let uncommented: String = text
        .lines()
        .map(|line| commented_setting(line).unwrap_or(line))
        .flat_map(|line| [line, "\n"])
        .collect();
    for (label, text) in [("as shipped", text), ("uncommented", uncommented.as_str())] {
        let source = Path::new(label);
        let settings = match read_settings(&cmd, source, text, &[]) {
            Ok(settings) => settings,
            Err(e) => {
                // The message starts with the label, as it would with a file's path.
                problems.push(e.message);
                continue;
            }
        };
        let mut args = vec![OsString::from(cmd.get_name())];
        args.extend(settings.iter().flat_map(|s| s.tokens.iter().cloned()));
        if let Err(e) = cmd.clone().try_get_matches_from(args) {
            problems.push(format!("{label}: {}", first_paragraph(&e)));
        }
    }
    let commented = text.lines().filter_map(commented_setting);
    let document = commented.flat_map(|line| [line, "\n"]).collect::<String>();
    if let Ok(document) = toml_edit::Document::parse(document) {
        for (key, item) in document.as_table().iter() {
            let Some(arg) = find_arg(&cmd, key) else {
                continue;
            };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let shown = item.as_value().map(values_as_strings).unwrap_or_default();
            if !defaults.is_empty() && shown != defaults {
                problems.push(format!(
                    "`# {key}` shows {shown:?} but the default is {defaults:?}"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// `--config PATH`, first in `--help`.
fn config_arg() -> Arg {
    Arg::new(CONFIG)
        .long(CONFIG)
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .action(ArgAction::Set)
        .display_order(0)
        .help(
            "Read settings from this TOML file: each key is a long flag without its dashes \
             (max-lifetime = 60, relay-ca = [\"ca.pem\"]); the command line and \
             environment variables override it",
        )
        .long_help(
            "Read settings from this TOML file. Each key is a long flag without its \
             dashes, with a value of the flag's type: `--max-lifetime 60` is \
             `max-lifetime = 60`, a repeatable flag takes a list \
             (`relay-ca = [\"/etc/rmb/ca.pem\"]`), a switch true or false. Precedence, \
             per setting: the command line, then the flag's environment variable, then \
             this file, then the built-in default. An unknown key, a value of the wrong \
             type or an invalid value is an error naming the file, line and key, and \
             nothing starts. A file holding a secret should be mode 0600. See \
             docs/operations.md, \"Configuration files\".",
        )
}

/// One setting read from the file.
#[derive(Debug)]
struct Setting {
    /// The key as written.
    key: String,
    /// The argument's id (for its value source).
    id: String,
    /// The flags it stands for, e.g. `--listen=127.0.0.1:8080`.
    tokens: Vec<OsString>,
    /// It sets one of the secret keys (to something that looks secret).
    secret: bool,
}

/// An error about the file, before it is formatted by clap.
#[derive(Debug)]
struct FileError {
    kind: ErrorKind,
    message: String,
}

impl FileError {
    fn new(kind: ErrorKind, message: String) -> Self {
        FileError { kind, message }
    }

    fn into_clap(self, cmd: &mut Command) -> clap::Error {
        clap::Error::raw(self.kind, &self.message).format(cmd)
    }
}

/// Parses `args` with the settings of the `--config` file among them (see the crate's
/// documentation for the order).
fn merged_matches(
    cmd: &mut Command,
    args: Vec<OsString>,
    secret_keys: &[&str],
) -> Result<ArgMatches, clap::Error> {
    // What the command line and environment give, and where the file is. Errors are put
    // off to the last parse, which reports them with the whole picture; `--help` and
    // `--version` end here.
    let given = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args.iter())?;
    let Some(path) = given.get_one::<PathBuf>(CONFIG).cloned() else {
        return cmd.try_get_matches_from_mut(args);
    };
    cmd.build();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        FileError::new(
            ErrorKind::Io,
            format!("cannot read config file {}: {e}", path.display()),
        )
        .into_clap(cmd)
    })?;
    let settings = read_settings(cmd, &path, &text, secret_keys).map_err(|e| e.into_clap(cmd))?;
    warn_if_readable(&path, &settings);

    let program = args
        .first()
        .cloned()
        .unwrap_or_else(|| OsString::from(cmd.get_name()));
    let mut merged = vec![program];
    let mut from_file = Vec::new();
    for setting in &settings {
        let source = given.value_source(&setting.id);
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        merged.extend(setting.tokens.iter().cloned());
        from_file.push(setting.key.as_str());
    }
    merged.extend(args.into_iter().skip(1));
    cmd.try_get_matches_from_mut(merged).map_err(|e| {
        if from_file.is_empty() {
            return e;
        }
        // E.g. a file's setting that `requires` a flag nobody gave: say where it came from.
        let note = format!(
            "note: settings from config file {}: {}",
            path.display(),
            from_file.join(", ")
        );
        // (The usage and hint that follow clap's own message are added again by `format`.)
        let message = format!("{}\n\n{note}", first_paragraph(&e));
        clap::Error::raw(e.kind(), message).format(cmd)
    })
}

/// The settings of a config file's text, each checked against `cmd`: known key, value
/// of the right shape, accepted by the flag's value parser.
fn read_settings(
    cmd: &Command,
    path: &Path,
    text: &str,
    secret_keys: &[&str],
) -> Result<Vec<Setting>, FileError> {
    let document = toml_edit::Document::parse(text).map_err(|e| {
        FileError::new(
            ErrorKind::InvalidValue,
            format!(
                "config file {} is not valid TOML: {}",
                path.display(),
                e.to_string().trim_end()
            ),
        )
    })?;
    let mut probe = cmd.clone();
    let mut settings: Vec<Setting> = Vec::new();
    for (key, item) in document.as_table().iter() {
        let line = document
            .as_table()
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .map_or(0, |span| line_of(text, span.start));
        let at = format!("{}:{line}", path.display());
        let bad = |kind, message: String| FileError::new(kind, format!("{at}: {message}"));
        if key == CONFIG {
            return Err(bad(
                ErrorKind::UnknownArgument,
                format!("`{CONFIG}`: a config file cannot name another one"),
            ));
        }
        if matches!(item, Item::Table(_) | Item::ArrayOfTables(_)) {
            return Err(bad(
                ErrorKind::InvalidValue,
                format!(
                    "`{key}` is a table; settings are plain keys at the top of the file, \
                     before any [section]"
                ),
            ));
        }
        let Some(arg) = find_arg(cmd, key) else {
            let hint = match closest(cmd, key) {
                Some(name) => format!("; did you mean `{name}`?"),
                None => String::new(),
            };
            return Err(bad(
                ErrorKind::UnknownArgument,
                format!(
                    "unknown setting `{key}`{hint} (settings are the long flags of `{} --help`, \
                     without the dashes)",
                    cmd.get_name()
                ),
            ));
        };
        let id = arg.get_id().as_str().to_string();
        if let Some(other) = settings.iter().find(|s| s.id == id) {
            return Err(bad(
                ErrorKind::ArgumentConflict,
                format!("`{key}` sets the same flag as `{}`", other.key),
            ));
        }
        let Item::Value(value) = item else {
            continue; // Item::None: nothing is set (tables were refused above)
        };
        let tokens = tokens(arg, key, value)
            .and_then(|tokens| check_tokens(&mut probe, key, &tokens).map(|()| tokens))
            .map_err(|m| bad(ErrorKind::InvalidValue, m))?;
        let secret = arg
            .get_long()
            .is_some_and(|long| secret_keys.contains(&long))
            && values_as_strings(value).iter().any(|v| looks_secret(v));
        settings.push(Setting {
            key: key.to_string(),
            id,
            tokens,
            secret,
        });
    }
    Ok(settings)
}

/// The flags that `value` of `key` stands for; an error message (naming `key`) when the
/// value has the wrong shape for the flag (a list for a single value, etc.).
fn tokens(arg: &Arg, key: &str, value: &Value) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().expect("found by its long name");
    let flag = OsString::from(format!("--{long}"));
    let with_value = |v: &str| OsString::from(format!("--{long}={v}"));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value.as_bool() {
            Some(true) => Ok(vec![flag]),
            Some(false) => Ok(Vec::new()),
            None => Err(format!("`{key}` is a switch: give true or false")),
        },
        ArgAction::Count => {
            let times = match (value.as_bool(), value.as_integer()) {
                (Some(on), _) => u8::from(on),
                (_, Some(n)) => u8::try_from(n).map_err(|_| {
                    format!("`{key}` counts repetitions of --{long}: give 0 to 255")
                })?,
                _ => {
                    return Err(format!(
                        "`{key}` takes a count (e.g. {key} = 1) or true/false"
                    ));
                }
            };
            Ok(vec![flag; usize::from(times)])
        }
        action @ (ArgAction::Set | ArgAction::Append) => {
            let range = arg.get_num_args().unwrap_or_default();
            let list = value.as_array();
            if range.min_values() >= 2
                || (matches!(action, ArgAction::Set) && range.max_values() > 1)
            {
                // One occurrence with several values, e.g. `--limit COUNT SIZE`.
                let Some(list) = list else {
                    return Err(format!(
                        "`{key}` takes a list of {} values, e.g. {key} = [{}]",
                        describe_count(range.min_values(), range.max_values()),
                        value_names(arg, range.min_values())
                    ));
                };
                let values = list_values(key, list)?;
                if values.len() < range.min_values() || values.len() > range.max_values() {
                    return Err(format!(
                        "`{key}` takes {} values, not {}",
                        describe_count(range.min_values(), range.max_values()),
                        values.len()
                    ));
                }
                let mut tokens = vec![flag];
                tokens.extend(values.iter().map(OsString::from));
                Ok(tokens)
            } else if matches!(action, ArgAction::Append) {
                // A repeatable flag: one occurrence per element.
                let Some(list) = list else {
                    return Err(format!(
                        "`{key}` is repeatable and takes a list, e.g. {key} = [{}]",
                        example(value)
                    ));
                };
                let values = list_values(key, list)?;
                Ok(values.iter().map(|v| with_value(v)).collect())
            } else {
                if list.is_some() {
                    return Err(format!("`{key}` takes one value, not a list"));
                }
                let v = scalar(value)
                    .ok_or_else(|| format!("`{key}` takes a string, number or boolean"))?;
                Ok(vec![with_value(&v)])
            }
        }
        _ => Err(format!("`{key}` cannot be set in a file")),
    }
}

/// Error kinds that say a value itself is bad (rather than that it breaks a rule about
/// other flags, e.g. `requires`, which the final parse checks on the whole).
const VALUE_ERRORS: &[ErrorKind] = &[
    ErrorKind::InvalidValue,
    ErrorKind::ValueValidation,
    ErrorKind::InvalidUtf8,
    ErrorKind::WrongNumberOfValues,
    ErrorKind::TooManyValues,
    ErrorKind::TooFewValues,
    ErrorKind::NoEquals,
];

/// One setting's flags parsed alone by `probe` (a clone of the command), so that a value
/// the flag's value parser refuses is reported with the key it came from.
fn check_tokens(probe: &mut Command, key: &str, tokens: &[OsString]) -> Result<(), String> {
    let program = OsString::from(probe.get_name());
    match probe.try_get_matches_from_mut(std::iter::once(program).chain(tokens.iter().cloned())) {
        Err(e) if VALUE_ERRORS.contains(&e.kind()) => {
            Err(format!("`{key}`: {}", first_paragraph(&e)))
        }
        _ => Ok(()),
    }
}

/// The scalar elements of a list (an error naming `key` for a nested list or table).
fn list_values(key: &str, list: &toml_edit::Array) -> Result<Vec<String>, String> {
    list.iter()
        .map(|v| {
            scalar(v).ok_or_else(|| format!("`{key}`: each element must be a string or number"))
        })
        .collect()
}

/// A string, number or boolean as the text a flag would take.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(f) => Some(f.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        Value::Datetime(_) | Value::Array(_) | Value::InlineTable(_) => None,
    }
}

/// A value as the list of texts the flag would take (a scalar is one).
fn values_as_strings(value: &Value) -> Vec<String> {
    match value.as_array() {
        Some(list) => list.iter().filter_map(scalar).collect(),
        None => scalar(value).into_iter().collect(),
    }
}

/// A value of a secret key that holds a secret: anything but a URL without a password.
fn looks_secret(value: &str) -> bool {
    match value.split_once("://") {
        Some((_, rest)) => {
            let authority = rest.split('/').next().unwrap_or("");
            authority
                .rsplit_once('@')
                .is_some_and(|(user, _)| user.contains(':'))
        }
        None => true,
    }
}

/// Warns (on stderr; logging is not set up yet) when the file sets a secret and users
/// other than its owner may read it.
fn warn_if_readable(path: &Path, settings: &[Setting]) {
    let secrets: Vec<&str> = settings
        .iter()
        .filter(|s| s.secret)
        .map(|s| s.key.as_str())
        .collect();
    if secrets.is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                eprintln!(
                    "warning: config file {} sets {} but other users may read it (mode {mode:04o}); \
                     make it readable by its owner only: chmod 600 {}",
                    path.display(),
                    secrets.join(", "),
                    path.display()
                );
            }
        }
    }
}

/// The settable argument `key` names: by its long name or an alias, in kebab-case (or
/// snake_case); not `--help`, `--version` or `--config`.
fn find_arg<'c>(cmd: &'c Command, key: &str) -> Option<&'c Arg> {
    let kebab = key.replace('_', "-");
    settable(cmd).find(|arg| names(arg).any(|name| name == key || name == kebab))
}

/// The arguments a file may set.
fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|arg| {
        arg.get_id() != CONFIG
            && arg.get_long().is_some()
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// An argument's long name and aliases.
fn names(arg: &Arg) -> impl Iterator<Item = &str> {
    arg.get_long()
        .into_iter()
        .chain(arg.get_all_aliases().unwrap_or_default())
}

/// The long name closest to an unknown `key`, when one is close enough to be a typo.
fn closest(cmd: &Command, key: &str) -> Option<String> {
    let kebab = key.trim_start_matches('-').replace('_', "-");
    settable(cmd)
        .filter_map(|arg| arg.get_long())
        .map(|long| (edit_distance(&kebab, long), long))
        .filter(|(distance, long)| *distance <= 3.max(long.len() / 4) && *distance < long.len())
        .min()
        .map(|(_, long)| long.to_string())
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// `line` without its comment mark when it is a commented-out setting (`# key = value`).
fn commented_setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let (key, _) = rest.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    is_key.then_some(rest)
}

/// The first paragraph of a clap error, without `error: `: the sentence saying what is
/// wrong, without the usage and the hint that follow.
fn first_paragraph(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let rendered = rendered.strip_prefix("error: ").unwrap_or(&rendered);
    rendered
        .split("\n\n")
        .next()
        .unwrap_or(rendered)
        .trim_end()
        .to_string()
}

/// "2", "1 or more", "2 to 4".
fn describe_count(min: usize, max: usize) -> String {
    match (min, max) {
        (min, max) if min == max => min.to_string(),
        (min, usize::MAX) => format!("{min} or more"),
        (min, max) => format!("{min} to {max}"),
    }
}

/// Placeholders for an example list: the flag's value names.
fn value_names(arg: &Arg, count: usize) -> String {
    let names: Vec<String> = match arg.get_value_names() {
        Some(names) => names.iter().map(|n| format!("{n}")).collect(),
        None => vec!["VALUE".to_string(); count.max(1)],
    };
    names.join(", ")
}

/// The value as it would look in a list, for an error's example.
fn example(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", s.value()),
        other => scalar(other).unwrap_or_else(|| "...".to_string()),
    }
}

#[cfg(test)]
mod tests;
