#!/usr/bin/env python3
"""Copies etcd's gRPC .proto files from an etcd checkout into this folder.

Usage: python3 vendor.py ETCD_CHECKOUT TAG

It reads the files at TAG with `git show`, so the checkout's work tree is not
used. Only code-generation options are removed: the gogoproto options and
the HTTP-gateway annotations (`google.api.http`), with their imports. These
affect Go and REST code generation only; no message, field, number, enum
or service is changed, so the wire format is etcd's.
"""

import pathlib
import re
import subprocess
import sys

FILES = {
    "api/etcdserverpb/rpc.proto": "etcd/api/etcdserverpb/rpc.proto",
    "api/mvccpb/kv.proto": "etcd/api/mvccpb/kv.proto",
    "api/authpb/auth.proto": "etcd/api/authpb/auth.proto",
    "server/etcdserver/api/v3lock/v3lockpb/v3lock.proto":
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "server/etcdserver/api/v3election/v3electionpb/v3election.proto":
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    "LICENSE": "LICENSE",
}

DROPPED_IMPORTS = ("gogoproto/", "google/api/", "protoc-gen-openapiv2/")


def strip(text: str) -> str:
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("import ") and any(d in stripped for d in DROPPED_IMPORTS):
            i += 1
            continue
        if stripped.startswith("option (gogoproto."):
            i += 1
            continue
        if stripped.startswith("option (google.api.http)"):
            # A block: skip to the line closing its braces.
            depth = line.count("{") - line.count("}")
            i += 1
            while depth > 0:
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
            continue
        # Field options of gogoproto only, e.g. `[(gogoproto.nullable) = false]`.
        line = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", line)
        out.append(line)
        i += 1
    # An rpc whose only option was removed keeps an empty body: `{}`.
    text = "\n".join(out) + "\n"
    text = re.sub(r"\{\s*\}", "{}", text)
    return text


def main() -> None:
    checkout, tag = sys.argv[1], sys.argv[2]
    here = pathlib.Path(__file__).resolve().parent
    commit = subprocess.check_output(
        ["git", "-C", checkout, "rev-list", "-n1", tag], text=True
    ).strip()
    for source, target in FILES.items():
        text = subprocess.check_output(
            ["git", "-C", checkout, "show", f"{tag}:{source}"], text=True
        )
        if source.endswith(".proto"):
            text = strip(text)
        path = here / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (here / "VERSION").write_text(f"{tag} {commit}\n")


if __name__ == "__main__":
    main()
