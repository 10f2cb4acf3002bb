"""An emulated arm64 userland: Debian's aarch64 Python under ``qemu-aarch64-static``, cached.

Contract:
- ``check_tools()`` raises ``EmulationUnavailable`` (one line: what is missing, how to get it).
- ``userland(cpu)`` -> root folder of a Debian bookworm arm64 userland with Python 3.11, built
  once with ``mmdebstrap --variant=extract`` (no emulated installer scripts; needs root), then
  hard-linked per CPU model so each copy carries that core's ``/proc/cpuinfo``.
- ``target_env(name, requirements)`` -> folder of aarch64 wheels installed from the x86 side with
  ``pip install --target`` for every manylinux aarch64 tag (ai-edge-litert is manylinux_2_27 only,
  tflite-runtime 2.14 manylinux_2_34); cached by the requirement list.
- ``run_python(cpu, paths, args)`` runs the aarch64 Python with ``-cpu <cpu>``. Only named cores
  are allowed: QEMU 7.2's default ``max`` CPU emulates SVE wrongly (int8 TFLite results differ).

Why a fake /proc/cpuinfo: onnxruntime (at import) and LiteRT (at ``Interpreter()``) crash on the
host's x86 cpuinfo under QEMU 7.2. QEMU's ``-L ROOT`` resolves absolute paths inside ROOT first,
so ``ROOT/proc/cpuinfo`` is what the emulated program reads; no mount namespace is needed.
Everything lives under ``$EDGEINFER_DEVICE_CACHE`` (default ``~/.cache/edgeinfer-device``),
written to a temp name and renamed, so an interrupted build is never reused.
Emulated timings are not device speed: nothing here reports them as such.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.errors import EdgeInferError

SUITE = "bookworm"
PYTHON = "usr/bin/python3.11"
PACKAGES = ("python3.11", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1", "libgomp1")
PLATFORM_TAGS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                 "manylinux_2_28_aarch64", "manylinux_2_31_aarch64", "manylinux_2_34_aarch64",
                 "manylinux_2_36_aarch64", "linux_aarch64")
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "mmdebstrap": "mmdebstrap"}


@dataclass(frozen=True)
class Core:
    """An emulated CPU model and the /proc/cpuinfo a device with it shows."""
    qemu: str
    device: str
    part: str
    variant: str
    features: str
    cores: int = 4


CORES: dict[str, Core] = {
    "cortex-a72": Core("cortex-a72", "Raspberry Pi 4 (BCM2711)", "0xd08", "0x0", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": Core("cortex-a76", "Raspberry Pi 5 (BCM2712), phone big cores", "0xd0b", "0x4",
                       "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                       "dcpop asimddp"),
}


class EmulationUnavailable(EdgeInferError):
    """This machine cannot build or run the arm64 userland (message says what is missing)."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEINFER_DEVICE_CACHE", Path.home() / ".cache" / "edgeinfer-device"))


def missing_tools(tools: dict[str, str] = TOOLS) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def check_tools(build: bool = False) -> None:
    """Raise ``EmulationUnavailable`` naming what is missing (``build``: also what mmdebstrap needs)."""
    need = [t for t in missing_tools() if build or t != "mmdebstrap"]
    if need:
        pkgs = " ".join(TOOLS[t] for t in need)
        raise EmulationUnavailable(f"arm64 emulation needs {', '.join(need)}: install it with "
                                   f"`sudo apt-get install {pkgs}` (Debian/Ubuntu)")
    if build and os.geteuid() != 0:
        raise EmulationUnavailable("building the arm64 userland needs root (mmdebstrap --mode=root); run as root "
                                   f"once, or copy a built {cache_dir() / 'userland'} here")


def install_tools(tools: dict[str, str] = TOOLS) -> str | None:
    """apt-get install the missing ``tools`` (command -> Debian package) when running as root with apt;
    returns why not, or None."""
    missing = missing_tools(tools)
    if not missing:
        return None
    pkgs = sorted({tools[t] for t in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"missing {', '.join(missing)} and not root with apt-get: `sudo apt-get install {' '.join(pkgs)}`"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # debian-archive-keyring: mmdebstrap verifies Debian's archive (not preinstalled on Ubuntu hosts)
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *pkgs, "debian-archive-keyring"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["?"])[-1]
            return f"`{' '.join(cmd)}` failed ({tail}); install {' '.join(pkgs)} by hand"
    return None


def _cpuinfo(core: Core) -> str:
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: {v}\nCPU part\t: {p}\nCPU revision\t: 1\n\n")
    return "".join(block.format(i=i, f=core.features, v=core.variant, p=core.part) for i in range(core.cores))


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished temp folder into place (another process may have won the race)."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise
    return final


def base_userland(log=None) -> Path:
    """The shared arm64 Debian userland (built on first use, ~15 s and ~80 MB)."""
    root = cache_dir() / "userland" / f"{SUITE}-arm64"
    if (root / PYTHON).exists():
        return root
    check_tools(build=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    if log:
        log(f"building the arm64 {SUITE} userland in {root} (mmdebstrap, once)")
    cmd = ["mmdebstrap", "--mode=root", "--variant=extract", "--arch=arm64", "--quiet",
           f"--include={','.join(PACKAGES)}", SUITE, str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not (tmp / PYTHON).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in (r.stderr or "").splitlines() if ln.startswith("E:")] or (r.stderr or "no output").splitlines()[-1:]
        raise EmulationUnavailable(f"mmdebstrap could not build the arm64 userland ({lines[0][:200]}); "
                                   "it needs network access to deb.debian.org (or an apt proxy)")
    return _publish(tmp, root)


def userland(cpu: str, log=None) -> Path:
    """Per-core copy of the base userland (hard links) whose /proc/cpuinfo describes ``cpu``."""
    core = CORES.get(cpu)
    if core is None:
        raise EdgeInferError(f"unknown emulated CPU {cpu!r}; use one of {', '.join(CORES)}")
    root = cache_dir() / "userland" / f"{SUITE}-arm64-{cpu}"
    if (root / PYTHON).exists() and (root / "proc" / "cpuinfo").exists():
        return root
    base = base_userland(log)
    tmp = Path(tempfile.mkdtemp(prefix=".linking-", dir=root.parent))
    tmp.rmdir()
    subprocess.run(["cp", "-al", str(base), str(tmp)], check=True)
    (tmp / "proc").mkdir(exist_ok=True)
    (tmp / "proc" / "cpuinfo").write_text(_cpuinfo(core))
    return _publish(tmp, root)


def pip_target(dest: Path, requirements: list[str], no_deps: bool = False) -> None:
    """Install aarch64 cp311 wheels for ``requirements`` into ``dest`` from this (x86) machine."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
           "--target", str(dest), "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
           "--only-binary=:all:"]
    for tag in PLATFORM_TAGS:
        cmd += ["--platform", tag]
    if no_deps:
        cmd.append("--no-deps")
    r = subprocess.run(cmd + list(requirements), capture_output=True, text=True)
    if r.returncode != 0:
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or r.stderr.strip().splitlines()[-1:] or ["?"]
        raise EmulationUnavailable(f"pip could not fetch aarch64 wheels for {' '.join(requirements)} ({err[0][:240]}); "
                                   "it needs the package index (network) or a wheel cache")


def target_env(name: str, requirements: list[str], log=None) -> Path:
    """Cached folder with aarch64 wheels for ``requirements`` (key: the sorted list)."""
    key = hashlib.sha256(json.dumps(sorted(requirements)).encode()).hexdigest()[:12]
    dest = cache_dir() / "envs" / f"{name}-{key}"
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    if log:
        log(f"installing aarch64 wheels for {name}: {' '.join(requirements)}")
    try:
        pip_target(tmp, requirements)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".complete").write_text(json.dumps(requirements))
    return _publish(tmp, dest)


def runtime_requirements(metadata_lines: list[str], extra: str | None) -> list[str]:
    """``Requires-Dist`` entries of edgeinfer's metadata that apply to ``edgeinfer[extra]`` on aarch64
    CPython 3.11 Linux (what pip resolves there), without edgeinfer itself."""
    from packaging.requirements import Requirement
    env = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
           "platform_machine": "aarch64", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "extra": extra or ""}
    reqs = []
    for line in metadata_lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.name != "edgeinfer" and (req.marker is None or req.marker.evaluate(env)):
                reqs.append(f"{req.name}{req.specifier}")
    return reqs


def installed_distributions(env: Path) -> dict[str, str]:
    """{normalized distribution name: version} of a --target folder."""
    out = {}
    for info in env.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].rpartition("-")
        out[name.lower().replace("_", "-")] = version
    return out


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (compiled ``__pycache__`` excluded: pip's installed size)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*")
               if f.is_file() and not f.is_symlink() and "__pycache__" not in f.parts)


def command(cpu: str, args: list[str], log=None) -> list[str]:
    """The argv that runs the aarch64 Python with ``args`` on an emulated ``cpu``."""
    root = userland(cpu, log)
    return ["qemu-aarch64-static", "-cpu", cpu, "-L", str(root), str(root / PYTHON), *map(str, args)]


def run_python(cpu: str, paths: list[Path], args: list[str], timeout: float = 900, cwd: Path | None = None,
               log=None) -> subprocess.CompletedProcess:
    """Run the emulated Python with ``paths`` as PYTHONPATH; a crash in the guest becomes ``returncode < 0``."""
    check_tools()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cache_dir()), "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join(str(p) for p in paths), "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run(command(cpu, args, log), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        raise EdgeInferError(f"the emulated arm64 run ({cpu}) did not finish within {timeout:.0f} s: "
                             f"{' '.join(map(str, args))[:200]}") from None


def guest_crash(proc: subprocess.CompletedProcess) -> str | None:
    """One line describing a crash of the emulated program (signal), or None."""
    text = (proc.stderr or "")
    for line in text.splitlines():
        if "uncaught target signal" in line:
            return line.strip()
    if proc.returncode < 0 or proc.returncode in (132, 134, 139):
        return f"killed by signal {abs(proc.returncode) if proc.returncode < 0 else proc.returncode - 128}"
    return None
