//! [`Lab`]: Linux network namespaces joined by a bridge, one per process of a fault run,
//! with an nftables table in each that [`Lab::set_faults`] fills with drop rules.
//!
//! The kernel here has no netem, so packet loss is `numgen random mod 100 < N drop` and a
//! partition is a plain `drop`, both matched on the other side's address inside the
//! namespace of one end. The bridge's own address (in the root namespace) is where the
//! test's Redis servers and fault proxies listen, so the test process reaches every
//! namespace and every namespace reaches it. Needs root; [`Lab::new`] says why not.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fault one namespace applies to its traffic with one other address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketDrop {
    /// Every packet to and from that address is dropped.
    All,
    /// This percentage of packets each way is dropped at random.
    Percent(u8),
    /// Every TCP segment to and from that address is answered with a reset (as by a
    /// firewall that rejects, or a middlebox that lost the connection's state).
    Reset,
}

/// One namespace of the lab.
#[derive(Debug, Clone)]
pub struct Place {
    /// The namespace's name (`ip netns exec <name>`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Place {
    /// The command prefix that runs a program inside this namespace.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// Namespaces on one bridge; all deleted on drop (their processes must be gone first).
pub struct Lab {
    bridge: String,
    /// The bridge's address, in the root namespace.
    pub host: Ipv4Addr,
    places: Vec<(String, Place)>,
}

/// Runs `program args`, returning its stderr when it fails.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The table each namespace starts with: empty filter chains the faults go into.
const TABLE: &str = "table inet fault {
    chain input { type filter hook input priority 0; policy accept; }
    chain output { type filter hook output priority 0; policy accept; }
}";

impl Lab {
    /// Creates one namespace per name in `names` on a new bridge. `Err` is the reason
    /// the run cannot happen here (not root, no `ip netns`, no `nft`): tests print it and
    /// skip.
    pub fn new(names: &[&str]) -> Result<Lab, String> {
        // The effective uid, read from /proc (no libc dependency for one number).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0");
        if !root {
            return Err("not root: network namespaces and nftables need CAP_NET_ADMIN".into());
        }
        for tool in ["ip", "nft"] {
            if Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                return Err(format!("`{tool}` is not installed (iproute2 / nftables)"));
            }
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("rf{:x}{n}", pid & 0xfffff);
        // A /24 no other lab (of this or another test process) uses right now.
        let octet = (0..250u32)
            .map(|i| ((pid + n * 7 + i) % 250 + 1) as u8)
            .find(|o| !subnet_in_use(*o))
            .ok_or("no free 10.231.x.0/24 subnet")?;
        let mut lab = Lab {
            bridge: format!("{tag}br"),
            host: Ipv4Addr::new(10, 231, octet, 1),
            places: Vec::new(),
        };
        run("ip", &["link", "add", &lab.bridge, "type", "bridge"], None)?;
        let cidr = format!("{}/24", lab.host);
        run("ip", &["addr", "add", &cidr, "dev", &lab.bridge], None)?;
        run("ip", &["link", "set", &lab.bridge, "up"], None)?;
        for (i, name) in names.iter().enumerate() {
            let place = Place {
                ns: format!("{tag}{name}"),
                ip: Ipv4Addr::new(10, 231, octet, i as u8 + 2),
            };
            run("ip", &["netns", "add", &place.ns], None)
                .map_err(|e| format!("cannot create network namespaces here: {e}"))?;
            lab.places.push((name.to_string(), place.clone()));
            let outside = format!("{tag}v{i}");
            let ns = place.ns.as_str();
            let ip = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns, "ip"];
                all.extend_from_slice(args);
                run("ip", &all, None)
            };
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
                None,
            )?;
            run(
                "ip",
                &["link", "set", &outside, "master", &lab.bridge],
                None,
            )?;
            run("ip", &["link", "set", &outside, "up"], None)?;
            ip(&["link", "set", "lo", "up"])?;
            ip(&["addr", "add", &format!("{}/24", place.ip), "dev", "eth0"])?;
            ip(&["link", "set", "eth0", "up"])?;
            run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(TABLE))?;
        }
        Ok(lab)
    }

    /// The namespace called `name` at [`Lab::new`].
    pub fn place(&self, name: &str) -> &Place {
        &self
            .places
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no namespace {name:?} in this lab"))
            .1
    }

    /// Replaces the fault rules of namespace `name`: for each `(address, drop)`, packets
    /// to and from that address are dropped as `drop` says. An empty list heals it.
    /// Returns how many packets the rules it replaced dropped.
    pub fn set_faults(&self, name: &str, faults: &[(Ipv4Addr, PacketDrop)]) -> u64 {
        let ns = &self.place(name).ns;
        let dropped = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "table", "inet", "fault"])
            .output()
            .map(|o| count_dropped(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or(0);
        let mut script =
            String::from("flush chain inet fault input\nflush chain inet fault output\n");
        for (addr, drop) in faults {
            let (matching, verdict) = match drop {
                PacketDrop::All => (String::new(), "drop"),
                PacketDrop::Percent(p) => (format!("numgen random mod 100 < {p} "), "drop"),
                PacketDrop::Reset => ("meta l4proto tcp ".into(), "reject with tcp reset"),
            };
            script.push_str(&format!(
                "add rule inet fault output ip daddr {addr} {matching}counter {verdict}\n\
                 add rule inet fault input ip saddr {addr} {matching}counter {verdict}\n"
            ));
        }
        run(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            Some(&script),
        )
        .unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
        dropped
    }
}

/// The sum of the `counter packets N` of an `nft list` output.
fn count_dropped(listing: &str) -> u64 {
    listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Whether some interface already has an address in 10.231.`octet`.0/24.
fn subnet_in_use(octet: u8) -> bool {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.contains(&format!(" 10.231.{octet}."))
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, place) in &self.places {
            let _ = run("ip", &["netns", "del", &place.ns], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge], None);
    }
}
