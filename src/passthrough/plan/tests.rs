use super::*;
use crate::passthrough::plan_disable;
use crate::pct_config::parse_pending;

/// Two GPUs, nvidiactl, nvidia-modeset and nvidia-uvm's two nodes, with
/// NVIDIA's default modes (`mode`), and a MIG capability.
fn host(mode: u32) -> Vec<Node> {
    let node = |name: &str, major, minor, mode| Node {
        name: name.into(),
        major,
        minor,
        mode,
        uid: 0,
        gid: 0,
    };
    vec![
        node("nvidia0", 195, 0, mode),
        node("nvidia1", 195, 1, mode),
        node("nvidiactl", 195, 255, mode),
        node("nvidia-modeset", 195, 254, mode),
        node("nvidia-uvm", 511, 0, 0o666),
        node("nvidia-uvm-tools", 511, 1, 0o666),
        node("nvidia-caps/nvidia-cap1", 234, 1, 0o400),
    ]
}

struct Case {
    conf: String,
    nodes: Vec<Node>,
    chosen: Gpus,
    group: Group,
    support: Support,
    layout: Layout,
    record: Option<Record>,
    replace_raw: bool,
}

impl Case {
    fn new(conf: &str) -> Case {
        Case {
            conf: conf.into(),
            nodes: host(0o666),
            chosen: Gpus::All,
            group: Group::None(None),
            support: Support::Devices { hotplug: true },
            layout: Layout::Unified,
            record: None,
            replace_raw: false,
        }
    }

    fn plan(&self) -> Result<Plan, Refused> {
        let current = PctConfig::parse(&self.conf);
        let pending = parse_pending(&self.conf);
        plan(&Facts {
            vmid: "101".parse().unwrap(),
            current: &current,
            pending: &pending,
            offered: &self.nodes,
            present: &self.nodes,
            mig: &[(1, 2)],
            chosen: &self.chosen,
            group: &self.group,
            support: self.support,
            layout: self.layout,
            record: self.record.as_ref(),
            replace_raw: self.replace_raw,
        })
    }
}

fn sets(p: &Plan) -> Vec<String> {
    p.set
        .iter()
        .map(|c| format!("{}: {}", c.key, c.value))
        .collect()
}

fn lines(lines: &[RawLine]) -> Vec<String> {
    lines.iter().map(ToString::to_string).collect()
}

const VIDEO: Group = Group::Found {
    name: "video",
    gid: 44,
};

/// An unprivileged container with a video group and a render node of its
/// own gets GPU 0's nodes, to its group, at the first free devN; the
/// admin's raw lines for the same nodes are said, and removed only with
/// --replace-raw, except the rule a bind that stays (GPU 1's) needs.
#[test]
fn a_chosen_gpu_to_the_containers_video_group() {
    let mut case = Case::new(
        "unprivileged: 1\ndev0: /dev/dri/renderD128,gid=104\ndev2: /dev/ttyUSB0\n\
         lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.cgroup2.devices.allow: c 511:* rwm\n\
         lxc.cgroup2.devices.allow: c 10:229 rwm\n\
         lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n\
         lxc.mount.entry: /dev/nvidia1 dev/nvidia1 none bind,optional,create=file\n\
         lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file\n",
    );
    case.chosen = Gpus::Minors(vec![0]);
    case.group = VIDEO;
    let p = case.plan().unwrap();
    assert_eq!(
        sets(&p),
        [
            "dev1: /dev/nvidia0,gid=44,mode=0660",
            "dev3: /dev/nvidiactl,gid=44,mode=0660",
            "dev4: /dev/nvidia-modeset,gid=44,mode=0660",
            "dev5: /dev/nvidia-uvm,gid=44,mode=0660",
            "dev6: /dev/nvidia-uvm-tools,gid=44,mode=0660",
        ]
    );
    assert!(
        p.replace.is_empty() && p.add.is_empty() && p.delete.is_empty(),
        "{p:?}"
    );
    let doubled = "lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file; lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file; lxc.cgroup2.devices.allow: c 511:* rwm";
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains(doubled) && n.contains("--replace-raw")),
        "{:?}",
        p.notes
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("its group video (gid 44)")));
    assert!(
        !p.notes.iter().any(|n| n.contains("MIG")),
        "GPU 1 is in MIG mode, GPU 0 is not"
    );
    assert_eq!(p.record.devices.len(), 5);
    assert!(p.record.raw.is_empty());

    case.replace_raw = true;
    let p = case.plan().unwrap();
    assert_eq!(
        lines(&p.replace),
        [
            "lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file",
            "lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file",
            "lxc.cgroup2.devices.allow: c 511:* rwm",
        ],
        "c 195:* stays for GPU 1's bind; c 10:229 is not NVIDIA's"
    );
}

/// Without a group: as open as NVIDIA makes the host's nodes; a host
/// that closed them (0660) gets Proxmox's default, root's alone. MIG is
/// said for a chosen GPU that has instances.
#[test]
fn without_a_group_as_open_as_the_hosts_nodes() {
    let case = Case::new("arch: amd64\n");
    let p = case.plan().unwrap();
    assert_eq!(p.set.len(), 6);
    assert!(p.set.iter().all(|c| c.value.ends_with(",mode=0666")));
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("no video or render group: mode 0666, as NVIDIA makes these nodes")));
    assert!(p
        .notes
        .iter()
        .any(|n| n.starts_with("GPU 1 is in MIG mode")));
    assert!(
        !sets(&p).iter().any(|s| s.contains("nvidia-caps")),
        "capabilities are never passed"
    );

    let mut case = Case::new("arch: amd64\n");
    case.nodes = host(0o660);
    case.group = Group::Unreadable("the container is stopped".into());
    let p = case.plan().unwrap();
    assert_eq!(sets(&p)[0], "dev0: /dev/nvidia0");
    assert_eq!(
        sets(&p)[4],
        "dev4: /dev/nvidia-uvm,mode=0666",
        "nvidia-uvm is 0666 on the host"
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("cannot be read (the container is stopped")
            && n.contains("only the container's root")));
}

/// Refused before anything is written: a GPU the host does not have, a
/// node missing now or left from another boot, no nvidia-uvm.
#[test]
fn refusals() {
    let mut case = Case::new("arch: amd64\n");
    case.chosen = Gpus::Minors(vec![2]);
    assert_eq!(
        case.plan(),
        Err(Refused::Usage(
            "no GPU 2 on this host; its GPUs: 0 (/dev/nvidia0), 1 (/dev/nvidia1)".into()
        ))
    );
    let mut case = Case::new("arch: amd64\n");
    let offered = case.nodes.clone();
    case.nodes.retain(|n| n.name != "nvidia-uvm-tools");
    case.nodes[4].major = 508;
    let current = PctConfig::parse(&case.conf);
    let refused = plan(&Facts {
        vmid: "101".parse().unwrap(),
        current: &current,
        pending: &PctConfig::default(),
        offered: &offered,
        present: &case.nodes,
        mig: &[],
        chosen: &Gpus::All,
        group: &case.group,
        support: case.support,
        layout: case.layout,
        record: None,
        replace_raw: false,
    });
    let Err(Refused::Host(why)) = refused else {
        panic!("{refused:?}")
    };
    assert!(why.starts_with("/dev/nvidia-uvm is 508:0, the loaded module's is 511:0 (left from another boot); /dev/nvidia-uvm-tools (511:1) does not exist: Proxmox refuses"), "{why}");
    assert!(
        why.contains("pve-nvidia-hook devices")
            && why.contains("systemctl enable pve-nvidia-hook-devices.service")
    );
    let mut case = Case::new("arch: amd64\n");
    case.nodes.retain(|n| !n.name.starts_with("nvidia-uvm"));
    assert!(
        matches!(case.plan(), Err(Refused::Host(w)) if w.starts_with("nvidia-uvm is not loaded"))
    );
}

/// A second run changes nothing; a run after the container got a video
/// group changes our own entries (and only ours); the admin's own devN
/// for a node stays as it is; a GPU no longer chosen loses our entry.
#[test]
fn reruns_touch_only_what_this_tool_wrote() {
    let case = Case::new("arch: amd64\ndev0: /dev/nvidiactl\n");
    let first = case.plan().unwrap();
    assert!(first
        .notes
        .iter()
        .any(|n| n
            == "dev0 already passes /dev/nvidiactl (/dev/nvidiactl): the admin's own, left as is"));
    assert!(!sets(&first).iter().any(|s| s.contains("nvidiactl")));
    let conf: String = std::iter::once(case.conf.clone())
        .chain(sets(&first).iter().map(|s| format!("{s}\n")))
        .collect();
    let mut again = Case::new(&conf);
    again.record = Some(first.record.clone());
    let p = again.plan().unwrap();
    assert!(p.set.is_empty() && p.delete.is_empty(), "{p:?}");
    assert_eq!(p.record, first.record);

    again.group = VIDEO;
    let p = again.plan().unwrap();
    assert_eq!(p.set.len(), 5);
    assert_eq!(p.set[0].before.as_deref(), Some("/dev/nvidia0,mode=0666"));
    assert_eq!(p.set[0].value, "/dev/nvidia0,gid=44,mode=0660");
    assert!(!sets(&p).iter().any(|s| s.starts_with("dev0:")));

    again.group = Group::None(None);
    again.chosen = Gpus::Minors(vec![1]);
    let p = again.plan().unwrap();
    assert_eq!(p.delete, ["dev1"], "ours for nvidia0");
    assert!(p.set.is_empty());
    assert!(!p.record.devices.contains_key("dev1"));

    // A tenant's record cannot claim the admin's dev0: its value differs
    // from what a record says, or equals what the admin wrote, and then
    // it is the admin's line that stays, never deleted.
    let mut claimed = again;
    let mut record = first.record.clone();
    record
        .devices
        .insert("dev0".into(), "/dev/nvidiactl,mode=0666".into());
    claimed.record = Some(record);
    claimed.chosen = Gpus::All;
    let p = claimed.plan().unwrap();
    assert!(!p.delete.contains(&"dev0".to_string()));
    assert!(!p.record.devices.contains_key("dev0"));
}

/// A pending devN (written while the container ran, before PVE could
/// hot-plug) counts as there; its key is taken.
#[test]
fn pending_entries_count() {
    let mut case =
        Case::new("arch: amd64\n\n[pve:pending]\ndev0: /dev/nvidia0,mode=0666\ndev1: /dev/null\n");
    case.chosen = Gpus::Minors(vec![0]);
    let p = case.plan().unwrap();
    assert_eq!(sets(&p)[0], "dev2: /dev/nvidiactl,mode=0666");
    assert!(!sets(&p).iter().any(|s| s.contains("nvidia0")));
}

/// On a host with cgroup v1's devices controller, Proxmox's devN rule
/// (cgroup2) does nothing: the v1 rule is added, and ours alone removed
/// once no node needs it.
#[test]
fn a_cgroup_v1_host_gets_the_rules_that_count_there() {
    let mut case = Case::new("arch: amd64\nlxc.cgroup.devices.allow: c 195:255 rw\n");
    case.layout = Layout::Legacy;
    case.chosen = Gpus::Minors(vec![0]);
    let p = case.plan().unwrap();
    assert_eq!(
        lines(&p.add),
        [
            "lxc.cgroup.devices.allow: c 195:0 rw",
            "lxc.cgroup.devices.allow: c 195:254 rw",
            "lxc.cgroup.devices.allow: c 511:0 rw",
            "lxc.cgroup.devices.allow: c 511:1 rw",
        ],
        "nvidiactl's is there already (the admin's)"
    );
    assert_eq!(p.record.raw, p.add);
    // The unified layout later (the host booted pure cgroup v2): ours go.
    let conf = format!("{}{}\n", case.conf, lines(&p.add).join("\n"));
    let mut later = Case::new(&conf);
    later.chosen = Gpus::Minors(vec![0]);
    later.record = Some(p.record.clone());
    let p2 = later.plan().unwrap();
    assert_eq!(p2.drop, p.add);
    assert!(p2.record.raw.is_empty());
    assert!(
        !p2.drop.iter().any(|l| l.value == "c 195:255 rw"),
        "the admin's stays"
    );
}

/// Before pve-container 5.0.7 there is no devN: each node is bound and
/// allowed with raw lines, with today's numbers; an unprivileged
/// container cannot open a bound node the host keeps 0660.
#[test]
fn before_pve_8_1_raw_lines() {
    let mut case = Case::new(
        "unprivileged: 1\nlxc.mount.entry: /opt/ctl dev/nvidiactl none bind,create=file\n",
    );
    case.support = Support::Raw;
    case.chosen = Gpus::Minors(vec![1]);
    case.nodes = host(0o660);
    case.replace_raw = true;
    let p = case.plan().unwrap();
    assert!(p.set.is_empty());
    assert_eq!(
        lines(&p.add),
        [
            "lxc.mount.entry: /dev/nvidia1 dev/nvidia1 none bind,optional,create=file",
            "lxc.cgroup2.devices.allow: c 195:1 rw",
            "lxc.cgroup2.devices.allow: c 195:255 rw",
            "lxc.mount.entry: /dev/nvidia-modeset dev/nvidia-modeset none bind,optional,create=file",
            "lxc.cgroup2.devices.allow: c 195:254 rw",
            "lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file",
            "lxc.cgroup2.devices.allow: c 511:0 rw",
            "lxc.mount.entry: /dev/nvidia-uvm-tools dev/nvidia-uvm-tools none bind,optional,create=file",
            "lxc.cgroup2.devices.allow: c 511:1 rw",
        ]
    );
    assert!(p.replace.is_empty());
    for said in [
        "lxc.mount.entry: /opt/ctl dev/nvidiactl none bind,create=file: the admin's own, left as is",
        "--replace-raw: nothing to replace",
        "it cannot open nvidia1, nvidiactl, nvidia-modeset (not 0666 on the host)",
        "nvidia-uvm's major (511) can change",
    ] {
        assert!(p.notes.iter().any(|n| n.contains(said)), "{said}: {:?}", p.notes);
    }
}

/// disable removes what the record names as the config holds it, and
/// nothing else: a pending entry of ours is reverted, one changed since is
/// the admin's, the admin's own devN and raw lines stay.
#[test]
fn disable_takes_back_only_what_was_written() {
    let record = Record {
        vmid: 101,
        recorded_unix: 0,
        devices: [
            ("dev1", "/dev/nvidia0,mode=0666"),
            ("dev2", "/dev/nvidiactl,mode=0666"),
            ("dev3", "/dev/nvidia-uvm,mode=0666"),
            ("dev4", "/dev/nvidia-uvm-tools,mode=0666"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        raw: vec![
            RawLine::new("lxc.cgroup.devices.allow", "c 195:0 rw"),
            RawLine::new("lxc.cgroup.devices.allow", "c 195:255 rw"),
        ],
    };
    let conf = "dev0: /dev/nvidia0,gid=44\ndev1: /dev/nvidia0,mode=0666\ndev2: /dev/nvidiactl,mode=0660\n\
                lxc.cgroup.devices.allow: c 195:0 rw\n\n[pve:pending]\ndev3: /dev/nvidia-uvm,mode=0666\n";
    let r = plan_disable(&record, &PctConfig::parse(conf), &parse_pending(conf));
    assert_eq!(r.delete, ["dev1"]);
    assert_eq!(r.revert, ["dev3"]);
    assert_eq!(lines(&r.drop), ["lxc.cgroup.devices.allow: c 195:0 rw"]);
    assert_eq!(
        r.notes,
        ["dev2 changed since it was written (/dev/nvidiactl,mode=0660): the admin's now, left as is"]
    );
}
