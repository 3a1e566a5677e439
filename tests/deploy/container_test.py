#!/usr/bin/python3
"""Static checks of deploy/container/Containerfile (it cannot be built here:
no registry). Usage: container_test.py BIN_DIR (the built binaries, whose
libraries the runtime stage must install)."""
import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, report  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARIES = ["atomq-coordinator", "atomq-participant", "atomqctl"]


def instructions(path):
    """(INSTRUCTION, args) per instruction, continuation lines joined."""
    text = open(path).read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(instrs):
    """[{name, base, instrs}] per FROM."""
    result = []
    for ins, args in instrs:
        if ins == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(result))
            result.append({"name": name, "base": words[0], "instrs": []})
        else:
            check(bool(result), f"{ins} before the first FROM")
            if result:
                result[-1]["instrs"].append((ins, args))
    return result


def installed_closure(packages):
    """Packages `packages` pull in, by dpkg's records of what is installed
    (offline; the binaries were built here, so their libraries are)."""
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        r = subprocess.run(["dpkg-query", "-W", "-f=${Pre-Depends}, ${Depends}", p],
                           capture_output=True, text=True)
        for alt in r.stdout.split(","):
            name = alt.split("|")[0].strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def needed_packages(bin_dir):
    """Debian packages of the shared libraries the binaries load."""
    libs = set()
    for b in BINARIES:
        out = subprocess.run(["ldd", os.path.join(bin_dir, b)], capture_output=True,
                             text=True, check=True).stdout
        libs.update(m.group(1) for m in re.finditer(r"=> (/\S+)", out))
    # Merged /usr: dpkg may know a library by another of its paths.
    candidates = {lib: {lib, os.path.realpath(lib), "/usr" + lib, lib.replace("/usr", "", 1)}
                  for lib in libs}
    # One dpkg -S for all (it reads its whole file list each time).
    out = subprocess.run(["dpkg", "-S", *sorted(set().union(*candidates.values()))],
                         capture_output=True, text=True).stdout
    owner = {}
    for line in out.splitlines():
        pkg, _, path = line.partition(": ")
        owner[path.strip()] = pkg.split(":")[0]
    pkgs = set()
    for lib, paths in sorted(candidates.items()):
        found = [owner[p] for p in paths if p in owner]
        if check(bool(found), f"no Debian package owns {lib}"):
            pkgs.add(found[0])
    return pkgs


def main():
    bin_dir = sys.argv[1]
    st = stages(instructions(os.path.join(ROOT, "deploy/container/Containerfile")))
    check(len(st) >= 2, "not multi-stage")
    for s in st:
        check(re.fullmatch(r"debian:(bookworm|12)(-slim)?", s["base"]) is not None,
              f"FROM {s['base']} is not Debian 12")
    build, final = st[0], st[-1]
    runs = " ".join(a for i, a in build["instrs"] if i == "RUN")
    check("deploy/local/install-deps.sh" in runs, "build stage does not run install-deps.sh")
    check(re.search(r"cmake .*-G Ninja", runs) is not None, "build stage does not configure with Ninja")
    for b in BINARIES:
        check(re.search(rf"--target [^&]*\b{b}\b", runs) is not None, f"build stage does not build {b}")

    users = [a for i, a in final["instrs"] if i == "USER"]
    check(bool(users), "runtime stage has no USER")
    if users:
        user = users[-1].split(":")[0]
        check(user not in ("root", "0"), f"runtime stage runs as {user}")
        check(user.isdigit(), "USER is not numeric (runAsNonRoot cannot check a name)")
    copies = [a for i, a in final["instrs"] if i == "COPY" and f"--from={build['name']}" in a]
    for b in BINARIES:
        check(any(re.search(rf"/{b}(\s|$)", c) for c in copies), f"runtime stage does not copy {b}")
    check(any(i == "EXPOSE" and a for i, a in final["instrs"]), "runtime stage EXPOSEs nothing")
    check(not any("install-deps.sh" in a or "-dev" in a for i, a in final["instrs"] if i == "RUN"),
          "runtime stage installs build dependencies")

    # The runtime stage's apt-get installs cover every library the binaries load.
    listed = set()
    for i, a in final["instrs"]:
        for cmd in a.split("&&") if i == "RUN" else []:
            words = shlex.split(cmd)
            if "apt-get" in words and "install" in words:
                rest = words[words.index("install") + 1:]
                skip = False
                for w in rest:
                    if skip:
                        skip = False
                    elif w == "-t":
                        skip = True
                    elif not w.startswith("-"):
                        listed.add(w)
    check(bool(listed), "runtime stage installs no packages")
    closure = installed_closure(listed)
    for p in sorted(needed_packages(bin_dir)):
        check(p in closure, f"runtime stage lacks {p} (needed by the binaries)")

    ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
    check(any(p.startswith("build") for p in ignore), ".dockerignore does not leave out build dirs")

    return report("container")


if __name__ == "__main__":
    sys.exit(main())
