//! Unit tests of the merging of a config file under the command line and environment,
//! and of the file's error messages, on a small command shaped like the binaries' flags.

use std::io::Write;
use std::net::SocketAddr;

use clap::{ArgAction, Parser};

use super::*;

/// Flags of every shape the binaries have.
#[derive(Parser, Debug)]
#[command(name = "demo")]
struct Demo {
    /// A single value with a default.
    #[arg(short, long, default_value = "127.0.0.1:1")]
    listen: SocketAddr,

    /// A number with a range.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    max_per_ip: u64,

    /// Repeatable, with a default (as rmb-peer's --relay).
    #[arg(long = "relay", default_value = "wss://default")]
    relays: Vec<String>,

    /// A switch.
    #[arg(long)]
    federation_http: bool,

    /// A count.
    #[arg(short, long, action = ArgAction::Count)]
    debug: u8,

    /// Two values at once (as rmb-relay's --limit).
    #[arg(long, num_args = 2, value_names = ["COUNT", "SIZE"])]
    limit: Option<Vec<u64>>,

    /// A secret from the environment too, with an alias.
    #[arg(long, env = "RMB_CONFIG_TEST_SECRET", visible_alias = "seed")]
    secret: Option<String>,

    /// Another environment variable, set by one test only.
    #[arg(long, env = "RMB_CONFIG_TEST_REDIS", default_value = "redis://default")]
    redis: String,

    /// A list in one value.
    #[arg(long, value_delimiter = ',')]
    ciphers: Vec<String>,

    /// Only with --secret.
    #[arg(long, requires = "secret")]
    needs_secret: Option<u32>,
}

/// A config file holding `text`, mode 0600.
fn file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn parse(file: &tempfile::NamedTempFile, extra: &[&str]) -> Result<Demo, clap::Error> {
    let mut args = vec!["demo", "--config", file.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    try_parse_from(args, &["secret"])
}

/// The error's text, without colours.
fn error(file: &tempfile::NamedTempFile, extra: &[&str]) -> String {
    parse(file, extra).unwrap_err().render().to_string()
}

#[test]
fn the_files_settings_replace_the_defaults() {
    let f = file(
        r#"
listen = "127.0.0.2:80"
max-per-ip = 0x10
relay = ["wss://a", "wss://b"]
federation-http = true
debug = 2
limit = [100, 2000]
ciphers = ["x", "y,z"]
"#,
    );
    let demo = parse(&f, &[]).unwrap();
    assert_eq!(demo.listen, "127.0.0.2:80".parse().unwrap());
    assert_eq!(demo.max_per_ip, 16);
    assert_eq!(demo.relays, ["wss://a", "wss://b"]);
    assert!(demo.federation_http);
    assert_eq!(demo.debug, 2);
    assert_eq!(demo.limit, Some(vec![100, 2000]));
    assert_eq!(demo.ciphers, ["x", "y", "z"]);
}

#[test]
fn without_a_file_the_defaults_hold_and_an_empty_file_changes_nothing() {
    let demo: Demo = try_parse_from(["demo"], &[]).unwrap();
    assert_eq!(demo.relays, ["wss://default"]);
    let demo = parse(&file("# nothing\n"), &[]).unwrap();
    assert_eq!(demo.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(demo.relays, ["wss://default"]);
    assert!(!demo.federation_http);
}

#[test]
fn the_command_line_wins_over_the_file_flag_by_flag() {
    let f = file(
        "listen = \"127.0.0.2:80\"\nrelay = [\"wss://a\", \"wss://b\"]\nmax-per-ip = 5\n\
         limit = [1, 2]\n",
    );
    // Before or after --config, short or long, a flag given replaces the file's value
    // (a list is replaced, not extended); the others still come from the file.
    let demo = parse(&f, &["-l", "127.0.0.3:90", "--relay", "wss://c"]).unwrap();
    assert_eq!(demo.listen, "127.0.0.3:90".parse().unwrap());
    assert_eq!(demo.relays, ["wss://c"]);
    assert_eq!(demo.max_per_ip, 5);
    let demo: Demo = try_parse_from(
        [
            "demo",
            "--limit",
            "7",
            "8",
            "--config",
            f.path().to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(demo.limit, Some(vec![7, 8]));
    assert_eq!(demo.listen, "127.0.0.2:80".parse().unwrap());
}

#[test]
fn an_environment_variable_wins_over_the_file() {
    // SAFETY: this variable is read by no other test; tests only read the environment.
    unsafe { std::env::set_var("RMB_CONFIG_TEST_REDIS", "redis://from-env") };
    let f = file("redis = \"redis://from-file\"\n");
    let from_env = parse(&f, &[]).unwrap().redis;
    let from_flag = parse(&f, &["--redis", "redis://from-flag"]).unwrap().redis;
    unsafe { std::env::remove_var("RMB_CONFIG_TEST_REDIS") };
    assert_eq!(from_env, "redis://from-env");
    assert_eq!(from_flag, "redis://from-flag");
    assert_eq!(parse(&f, &[]).unwrap().redis, "redis://from-file");
}

#[test]
fn aliases_and_snake_case_name_the_same_flag() {
    let demo = parse(&file("seed = \"words\"\nmax_per_ip = 3\n"), &[]).unwrap();
    assert_eq!(demo.secret.as_deref(), Some("words"));
    assert_eq!(demo.max_per_ip, 3);
    let e = error(&file("max_per_ip = 3\nmax-per-ip = 4\n"), &[]);
    assert!(
        e.contains(":2: `max-per-ip` sets the same flag as `max_per_ip`"),
        "{e}"
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_the_closest_flag() {
    let f = file("listen = \"127.0.0.1:2\"\n\nmax-per-iq = 3\n");
    let e = error(&f, &[]);
    let at = format!("{}:3:", f.path().display());
    assert!(e.contains(&at), "{e}");
    assert!(
        e.contains("unknown setting `max-per-iq`; did you mean `max-per-ip`?"),
        "{e}"
    );
    let e = error(&file("frobnicate = 1\n"), &[]);
    assert!(
        e.contains("unknown setting `frobnicate` (settings are"),
        "{e}"
    );
    for key in ["help", "version", "config"] {
        let e = error(&file(&format!("{key} = true\n")), &[]);
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
}

#[test]
fn a_value_of_the_wrong_shape_names_its_key() {
    let cases = [
        (
            "relay = \"wss://a\"\n",
            "`relay` is repeatable and takes a list, e.g. relay = [\"wss://a\"]",
        ),
        (
            "listen = [\"127.0.0.1:1\"]\n",
            "`listen` takes one value, not a list",
        ),
        (
            "federation-http = \"yes\"\n",
            "`federation-http` is a switch: give true or false",
        ),
        (
            "limit = 5\n",
            "`limit` takes a list of 2 values, e.g. limit = [COUNT, SIZE]",
        ),
        ("limit = [1, 2, 3]\n", "`limit` takes 2 values, not 3"),
        ("debug = 300\n", "`debug` counts repetitions of --debug"),
        (
            "relay = [[\"a\"]]\n",
            "`relay`: each element must be a string or number",
        ),
        (
            "listen = { host = \"x\" }\n",
            "`listen` takes a string, number or boolean",
        ),
        ("[listen]\nport = 1\n", "`listen` is a table"),
    ];
    for (text, expected) in cases {
        let e = error(&file(text), &[]);
        assert!(e.contains(expected), "{text}: {e}");
        assert!(e.contains(":1: "), "{text}: {e}");
    }
}

#[test]
fn a_value_the_flag_refuses_gets_clap_s_message_with_the_key() {
    let e = error(&file("\nlisten = \"nowhere\"\n"), &[]);
    assert!(
        e.contains(":2: `listen`: invalid value 'nowhere' for '--listen <LISTEN>'"),
        "{e}"
    );
    let e = error(&file("max-per-ip = 0\n"), &[]);
    assert!(
        e.contains("`max-per-ip`: invalid value '0' for '--max-per-ip <MAX_PER_IP>'"),
        "{e}"
    );
    let e = error(&file("limit = [1, \"many\"]\n"), &[]);
    assert!(e.contains("`limit`: invalid value 'many'"), "{e}");
}

#[test]
fn bad_toml_and_a_missing_file_say_where() {
    let f = file("listen = \"127.0.0.1:2\"\nrelay = [\"a\",\n= 3\n");
    let e = error(&f, &[]);
    assert!(
        e.contains(&format!(
            "config file {} is not valid TOML",
            f.path().display()
        )),
        "{e}"
    );
    assert!(e.contains("line 3"), "{e}");
    let e = try_parse_from::<Demo, _, _>(["demo", "--config", "/nonexistent/rmb.toml"], &[])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    let text = e.render().to_string();
    assert!(
        text.contains("cannot read config file /nonexistent/rmb.toml: "),
        "{text}"
    );
    assert_ne!(e.exit_code(), 0);
}

#[test]
fn a_rule_broken_by_the_files_settings_says_they_came_from_it() {
    let f = file("needs-secret = 1\nmax-per-ip = 2\n");
    let e = error(&f, &[]);
    assert!(e.contains("--secret"), "{e}");
    assert!(
        e.contains(&format!(
            "note: settings from config file {}: needs-secret, max-per-ip",
            f.path().display()
        )),
        "{e}"
    );
    // A bad flag on the command line is still clap's own error.
    let e = error(&f, &["--listen", "x"]);
    assert!(
        e.contains("invalid value 'x' for '--listen <LISTEN>'"),
        "{e}"
    );
}

#[test]
fn help_and_version_work_with_or_without_a_file() {
    let f = file("bogus = 1\n");
    let e = parse(&f, &["--help"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DisplayHelp);
    let help = e.render().to_string();
    assert!(help.contains("--config <PATH>"), "{help}");
    let long = command::<Demo>().render_long_help().to_string();
    assert!(
        long.contains("Precedence, per setting: the command line"),
        "{long}"
    );
}

#[test]
fn secrets_are_told_apart_from_urls_without_passwords() {
    assert!(looks_secret("word word word"));
    assert!(looks_secret("redis://user:pw@host:6379"));
    assert!(!looks_secret("redis://host:6379"));
    assert!(!looks_secret("redis://user@host:6379/0"));
}

#[test]
fn edit_distance_counts_single_edits() {
    assert_eq!(edit_distance("relay", "relay"), 0);
    assert_eq!(edit_distance("realy", "relay"), 2);
    assert_eq!(edit_distance("max-conections", "max-connections"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
}

#[test]
fn check_example_finds_wrong_defaults_and_keys() {
    let good = "# max-per-ip = 10\n# relay = [\"wss://default\"]\n# federation-http = false\n\
                # secret = \"words\"\nlisten = \"127.0.0.1:5\"\n";
    check_example::<Demo>(good).unwrap();
    let wrong_default = "# max-per-ip = 11\n";
    let e = check_example::<Demo>(wrong_default).unwrap_err();
    assert!(
        e.contains("`# max-per-ip` shows [\"11\"] but the default is [\"10\"]"),
        "{e}"
    );
    let unknown = "# max-per-iq = 10\n";
    let e = check_example::<Demo>(unknown).unwrap_err();
    assert!(
        e.contains("uncommented:1: unknown setting `max-per-iq`"),
        "{e}"
    );
}
