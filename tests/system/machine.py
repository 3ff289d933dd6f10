"""A Debian 12 machine for the operator's guide: a root made once with debootstrap (cached as a
tarball), unpacked afresh for each test and booted under systemd-nspawn with a network of its own.

It is offline, so that a check does not depend on the network or on today's mirrors: apt's one
source is a folder of the packages the guide and install.sh install (git, mosquitto, sqlite3, ...,
downloaded with their dependencies when the root was made, installed only when a command asks), and
pip finds the project's pinned packages in a wheelhouse built beforehand (/etc/pip.conf). The operator is `ubuntu`, with password-less sudo as
on a Lightsail instance. `nano` is a scripted editor (each call applies the edit the test queued
for it, and fails if none is), and commands that follow for ever (`journalctl -f`, `tail -f`,
`mosquitto_sub` without a count) are cut after two seconds, as an operator would press Ctrl+C."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

LAB = Path(os.environ.get("LAB", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mqtt-client-lab"))
BASE = "systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,iproute2,sudo,procps,gzip"
# Installed by the guide, install.sh or the original program, from the local source.
LOCAL = "git mosquitto mosquitto-clients sqlite3 python3-paho-mqtt prometheus curl"
TARBALL = LAB / "guide-bookworm-v3.tar"

# Terminal habits, as shell scripts in /usr/local/bin (first in the login PATH and in sudo's).
SHIMS = {
    "nano": """#!/bin/bash
# A scripted editor: applies the edit the test queued for this file.
edit=/var/lib/guide-editor/$(echo "$1" | tr / _)
[ -x "$edit" ] || { echo "nano: no scripted edit for $1" >&2; exit 1; }
"$edit" "$1" && rm -f "$edit"
""",
    "ssh": """#!/bin/bash
echo "ssh: already on the machine"
""",
    "journalctl": """#!/bin/bash
case " $* " in *" -f "*|*" --follow "*) timeout 2 /usr/bin/journalctl "$@"; [ $? = 124 ] && exit 0 ;; esac
exec /usr/bin/journalctl "$@"
""",
    "tail": """#!/bin/bash
case " $* " in *" -f "*|*" -F "*) timeout 2 /usr/bin/tail "$@"; [ $? = 124 ] && exit 0 ;; esac
exec /usr/bin/tail "$@"
""",
    "mosquitto_sub": """#!/bin/bash
case " $* " in *" -C "*|*" -W "*) exec /usr/bin/mosquitto_sub "$@" ;; esac
timeout 2 /usr/bin/mosquitto_sub "$@"; rc=$?; [ $rc = 124 ] && exit 0; exit $rc
""",
}


def commands(script: str) -> list[str]:
    """A script's commands, one per entry: continued lines joined, blank and comment lines left out."""
    found, current = [], ""
    for line in script.splitlines():
        current += line + "\n"
        if not line.endswith("\\"):
            if current.strip() and not current.lstrip().startswith("#"):
                found.append(current.rstrip("\n"))
            current = ""
    return found


def sh(cmd: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout, **kw)


def available() -> str | None:
    """Why this machine cannot run the check, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mounts)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                          ("nsenter", "util-linux"), ("dpkg-scanpackages", "dpkg-dev")):
        if not shutil.which(tool) and sh(f"apt-get install -y -qq {package}").returncode != 0:
            return f"{tool} is missing and apt-get cannot install {package}"
    return None


def cached_root() -> Path:
    """The tarball of a Debian 12 root with the guide's packages (about 3 minutes the first time)."""
    LAB.mkdir(parents=True, exist_ok=True)
    if not TARBALL.exists():
        root = Path(tempfile.mkdtemp(prefix="guide-root.", dir="/var/tmp"))
        mirror = sh("grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null"
                    " | grep -oE 'https?://[^ ]+/debian' | head -1").stdout.strip() or "http://deb.debian.org/debian"
        log = LAB / "debootstrap-guide.log"
        done = sh(f"debootstrap --variant=minbase --include={BASE} bookworm {root} {mirror} > {log} 2>&1",
                  timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed: see {log}")
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        local = root / "var/cache/local-debs"
        done = sh(f"chroot {root} /bin/bash -c 'apt-get update -qq && apt-get install -y -qq --download-only {LOCAL}'"
                  f" >> {log} 2>&1 && mkdir -p {local} && mv {root}/var/cache/apt/archives/*.deb {local}/ && "
                  f"cd {local} && dpkg-scanpackages . /dev/null > Packages 2>> {log}", timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"downloading {LOCAL} failed: see {log}")
        # Offline from here on: that folder is apt's only source.
        sh(f"rm -f {root}/etc/apt/sources.list.d/*; rm -rf {root}/var/lib/apt/lists/*; "
           f"mkdir -p {root}/var/lib/apt/lists/partial; "
           f"echo 'deb [trusted=yes] file:/var/cache/local-debs ./' > {root}/etc/apt/sources.list")
        sh(f"tar -C {root} -cf {TARBALL}.part . && mv {TARBALL}.part {TARBALL}", timeout=600)
        shutil.rmtree(root, ignore_errors=True)
    return TARBALL


def wheelhouse(project: Path, commits: tuple[str, ...] = ()) -> Path:
    """Every pinned package of requirements.txt, now and at each commit, as wheels for pip."""
    house = LAB / "wheels"
    house.mkdir(parents=True, exist_ok=True)
    texts = [(project / "requirements.txt").read_text()]
    texts += [sh(f"git -C {project} show {c}:requirements.txt").stdout for c in commits]
    for i, text in enumerate(texts):
        req = house / f"requirements-{i}.txt"
        req.write_text(text)
        # Built here (peewee comes as source only) for this Python 3.11, which Debian 12's matches.
        got = sh(f"{sys.executable} -m pip wheel -q --disable-pip-version-check -w {house} -r {req}", timeout=900)
        if got.returncode != 0:
            raise RuntimeError(f"pip wheel: {got.stderr[-500:]}")
    return house


def on_terminal(cmd: list[str], timeout: float, answers: list) -> subprocess.CompletedProcess:
    """cmd with a terminal of its own (sudo, getpass and mosquitto_passwd want one), typing each
    answer once its prompt shows; stdout and stderr together."""
    master, slave = os.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
    os.close(slave)
    out, seen, deadline = b"", 0, time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"no end after {timeout:g} s: {cmd[-1][-300:]}\n{out[-2000:].decode()}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every process on the terminal is gone
                    data = b""
                if not data:
                    break
                out += data
                if answers and re.search(answers[0][0], out[seen:].decode(errors="replace")):
                    os.write(master, answers.pop(0)[1].encode() + b"\n")
                    seen = len(out)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return subprocess.CompletedProcess(cmd, proc.wait(), text, "")


class Machine:
    """One booted machine. `run` is the operator's login shell; `root` a root shell."""

    def __init__(self, project: Path, workdir: Path, releases: tuple[str, ...] = ()):
        self.project, self.releases = project, releases
        self.dir = workdir / "root"
        self.dir.mkdir(mode=0o755)
        self.nspawn: subprocess.Popen | None = None
        self.init = 0
        subprocess.run(["tar", "-C", str(self.dir), "-xf", str(cached_root())], check=True, timeout=600)
        os.chmod(self.dir, 0o755)
        self._prepare()

    def _prepare(self) -> None:
        d = self.dir
        (d / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tlightsail\n"
                                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (d / "etc/hostname").write_text("lightsail\n")
        shutil.copytree(wheelhouse(self.project, self.releases), d / "var/cache/wheels", dirs_exist_ok=True)
        (d / "etc/pip.conf").write_text("[global]\nno-index = true\nfind-links = /var/cache/wheels\n")
        for name, text in SHIMS.items():
            path = d / "usr/local/bin" / name
            path.write_text(text)
            path.chmod(0o755)
        (d / "var/lib/guide-editor").mkdir(parents=True, exist_ok=True)
        # The operator, as on Lightsail: ubuntu, sudo without a password.
        self.chroot("useradd -m -s /bin/bash ubuntu && echo 'ubuntu ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ubuntu"
                    " && chmod 0440 /etc/sudoers.d/ubuntu")
        # The project as a repository the operator can clone and pull from.
        subprocess.run(["git", "clone", "-q", "--bare", str(self.project), str(d / "srv/mqtt-client.git")],
                       check=True, timeout=300)
        head = sh(f"git -C {self.project} rev-parse HEAD").stdout.strip()
        sh(f"git -C {d}/srv/mqtt-client.git update-ref refs/heads/main {head} && "
           f"git -C {d}/srv/mqtt-client.git symbolic-ref HEAD refs/heads/main")
        (d / "etc/gitconfig").write_text("[safe]\n\tdirectory = *\n")  # the repository is root's

    def chroot(self, cmd: str) -> None:
        subprocess.run(["chroot", str(self.dir), "/bin/bash", "-c", cmd], check=True, timeout=120,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})

    def edit(self, path: str, script: str) -> None:
        """Queue what the next `nano PATH` does: a bash script given the file as $1."""
        target = self.dir / "var/lib/guide-editor" / path.replace("/", "_")
        target.write_text("#!/bin/bash\nset -e\n" + script + "\n")
        target.chmod(0o755)

    # -- booting and dying

    def boot(self, private_network: bool = True) -> None:
        """Boot it; without a private network it shares the host's (a broker on the host)."""
        log = open(LAB / "guide-console.log", "ab")
        self.nspawn = subprocess.Popen(["systemd-nspawn", "-D", str(self.dir), "--boot", "--register=no",
                                        "--keep-unit", "-q", *(["--private-network"] if private_network else [])],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.init:
            self.init = self._find_init()
            time.sleep(0.2)
        if not self.init:
            raise RuntimeError("the machine did not boot (see guide-console.log)")
        while time.monotonic() < deadline:
            state = self.root("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"systemd did not finish booting: {state}")

    def _find_init(self) -> int:
        """The machine's PID 1: the descendant of systemd-nspawn whose own pid, inside, is 1."""
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        family, grew = {self.nspawn.pid}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in family} - family
            family |= more
            grew = bool(more)
        for pid in family - {self.nspawn.pid}:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                return pid
        return 0

    def power_cut(self) -> None:
        """Every process of the machine killed at once, as a power cut would (the host keeps its page
        cache, so this tests what was written, not what was flushed: synchronous=FULL does that)."""
        if self.init:
            os.kill(self.init, 9)
        if self.nspawn:
            if not self.init:
                os.killpg(self.nspawn.pid, 9)
            self.nspawn.wait(timeout=60)
        self.nspawn, self.init = None, 0

    def halt(self) -> None:
        if self.nspawn and self.nspawn.poll() is None:
            self.root("systemctl poweroff --no-block", check=False)
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.power_cut()
        self.nspawn, self.init = None, 0

    def destroy(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- shells

    def inside(self, *argv: str, terminal: bool = False) -> list[str]:
        """argv run inside the machine, with a clean environment."""
        return ["nsenter", "-t", str(self.init), "-m", "-p", "-u", "-i", "-n", "--", "/usr/bin/env", "-i",
                "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                *(["TERM=dumb"] if terminal else []), *argv]

    def root(self, cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(self.inside("/bin/bash", "-c", cmd), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"as root: {cmd}\nexit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def run(self, script: str, timeout: float = 600, check: bool = True,
            answers: tuple[tuple[str, str], ...] = ()) -> subprocess.CompletedProcess:
        """A script in the operator's login shell on a terminal, in the folder the previous one
        ended in, as in one terminal session; the first command that fails ends it. Each (prompt,
        answer) is typed once the prompt (a regex) shows."""
        steps = []
        for n, command in enumerate(commands(script), 1):  # each checked: bash -e overlooks `false && x`
            steps.append(f"{command}\nrc=$?; [ $rc = 0 ] || {{ echo \"guide: command {n} exited $rc\"; exit $rc; }}")
        wrapped = ("export SYSTEMD_PAGER=cat PAGER=cat; cd \"$(cat ~/.cwd 2>/dev/null || echo ~)\"; set -o pipefail\n"
                   + "\n".join(steps) + "\npwd > ~/.cwd")
        done = on_terminal(self.inside("/usr/sbin/runuser", "-l", "ubuntu", "-c", wrapped, terminal=True),
                           timeout, list(answers))
        if check and done.returncode != 0:
            raise AssertionError(f"as ubuntu:\n{script}\nexit {done.returncode}\n{done.stdout[-4000:]}")
        return done

    def sql(self, query: str) -> str:
        return self.root(f"sqlite3 /var/lib/mqtt-client/mqtt_data.db {shlex.quote(query)}").stdout.strip()

    def wait(self, what: str, test, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if test():
                return
            time.sleep(0.3)
        raise AssertionError(f"waited {timeout:g} s for {what}")

    def active(self) -> bool:
        return self.root("systemctl is-active mqtt-client", check=False).stdout.strip() == "active"
