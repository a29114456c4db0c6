"""storage.cfg for the pct and pvesh stand-ins, read as Proxmox reads it:
pve-common's PVE::SectionConfig::parse_config, then pve-storage's
PVE::Storage::Plugin::parse_config (see src/storage/parse.rs, which follows
the same sources). Comment lines are skipped anywhere; an empty line ends a
section; keys are `^\\s+(\\S+)(\\s+(.*\\S))?\\s*$`; a bare boolean is 1 and a
boolean is only 1 or 0; the first of duplicate keys wins; a later section of
the same ID replaces an earlier one; `local` is forced to a dir at
/var/lib/vz and has no `nodes`; a missing `content` is the plugin's default.
"""
import os
import re

HEADER = re.compile(r"(\S+):\s*(\S+)\s*")
KEY = re.compile(r"\s+(\S+)(?:\s+(.*\S))?\s*")
STORAGE_ID = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]", re.I)
DEFAULT_CONTENT = {"dir": ["images", "rootdir"], "btrfs": ["images", "rootdir"],
                   "nfs": ["images"], "cifs": ["images"], "cephfs": ["backup"]}
LOCAL = {"type": "dir", "path": "/var/lib/vz", "dirs": {}, "disable": False, "nodes": None,
         "is_mountpoint": None,
         "content": ["backup", "images", "iso", "rootdir", "snippets", "vztmpl"]}


def split_list(value):
    return [v for v in re.split(r"[,;\s]+", value) if v]


def boolean(value):
    if value is None or value == "1":
        return True
    if value == "0":
        return False
    raise ValueError(value)


def decode(key, value):
    if key in ("disable", "shared"):
        return boolean(value)
    if value is None:
        raise ValueError(key)
    if key == "content":
        return [c for c in split_list(value) if c != "none"]
    if key == "nodes":
        return split_list(value)
    if key == "content-dirs":
        dirs = {}
        for kv in split_list(value):
            k, sep, v = kv.partition("=")
            if not sep or not re.fullmatch(r"[a-z]+", k) or not v or ".." in v or v.endswith("."):
                raise ValueError(value)
            dirs[k] = v
        return dirs
    return value


def parse(text):
    lines = [l for l in text.split("\n") if not re.match(r"\s*#", l)]
    found = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line in ("", "0"):
            continue
        m = HEADER.fullmatch(line)
        if not m:
            continue
        kind, name = m.group(1).lower(), m.group(2)
        valid = len(name) >= 2 and STORAGE_ID.fullmatch(name) is not None
        conf = {}
        while i < len(lines) and lines[i] not in ("", "0"):
            k = KEY.fullmatch(lines[i])
            i += 1
            if not valid or not k or k.group(1) in conf:
                continue
            try:
                conf[k.group(1)] = decode(k.group(1), k.group(2))
            except ValueError:
                pass
        if not valid or (kind == "dir" and "path" not in conf):
            continue
        found.pop(name, None)
        found[name] = {"type": kind, "path": conf.get("path"), "dirs": conf.get("content-dirs", {}),
                       "content": conf.get("content", DEFAULT_CONTENT.get(kind, [])),
                       "disable": conf.get("disable", False), "nodes": conf.get("nodes"),
                       "is_mountpoint": conf.get("is_mountpoint")}
    local = found.get("local")
    if not local or local["type"] != "dir" or local["path"] != "/var/lib/vz":
        found["local"] = dict(LOCAL)
    found["local"]["nodes"] = None
    return found


def load(pve):
    try:
        text = open(os.path.join(pve, "storage.cfg")).read()
    except FileNotFoundError:
        text = ""
    return parse(text)


def snippets_dir(storage, root):
    """PVE::Storage::Plugin::get_subdir for snippets, below `root`."""
    sub = storage["dirs"].get("snippets", "snippets")
    return os.path.join(root, storage["path"].lstrip("/"), sub.lstrip("/"))
