"""tools/avx2_test.py's pure pieces: the masked /proc/cpuinfo and QEMU's warnings (the emulated run itself
is `make avx2-test`, about as long as the suite)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import avx2_test  # noqa: E402

from edgeinfer import int8_arith  # noqa: E402


def test_masked_cpuinfo_reads_as_an_avx2_host(monkeypatch):
    text = ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx_vnni amx_int8 vaes bmi2\n"
            "model name\t: AMD EPYC\n\nprocessor\t: 1\nflags\t\t: avx2 avx512_vnni\n")
    masked = avx2_test.masked_cpuinfo(text)
    flags = [line.split(":", 1)[1].split() for line in masked.splitlines() if line.startswith("flags")]
    assert flags == [["fpu", "sse2", "avx", "avx2", "fma", "bmi2"], ["avx2"]]
    assert "model name\t: AMD EPYC" in masked
    monkeypatch.setattr(int8_arith, "_cpu_flags", lambda: set(flags[0]))
    int8_arith._detect.cache_clear()
    try:
        assert int8_arith._detect() == "x86-avx2"
    finally:
        int8_arith._detect.cache_clear()


def test_qemu_warnings_name_the_features_to_drop():
    err = ("qemu-x86_64-static: warning: TCG doesn't support requested feature: CPUID.07H:EBX.invpcid [bit 10]\n"
           "qemu-x86_64-static: warning: TCG doesn't support requested feature: CPUID.01H:ECX.tsc-deadline [bit 24]\n"
           "qemu-x86_64-static: warning: TCG doesn't support requested feature: CPUID.07H:EBX.invpcid [bit 10]\n")
    assert avx2_test.unsupported_features(err) == ["invpcid", "tsc-deadline"]
    assert avx2_test.unsupported_features("") == []


def test_nothing_to_emulate_or_no_qemu_is_one_skip_line_unless_required(monkeypatch, capsys):
    from converters import arm_userland
    monkeypatch.setattr(avx2_test.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(int8_arith, "_detect", lambda: "x86-avx2")
    assert avx2_test.main([]) == 0 and capsys.readouterr().out.startswith("SKIP avx2-test: this host has no VNNI")
    monkeypatch.setattr(int8_arith, "_detect", lambda: "x86-vnni")
    monkeypatch.setattr(avx2_test.shutil, "which", lambda _name: None)
    monkeypatch.setattr(arm_userland, "install_tools", lambda tools: f"missing {', '.join(tools)}")
    assert avx2_test.main([]) == 0
    assert capsys.readouterr().out.strip() == "SKIP avx2-test: missing qemu-x86_64-static"
    monkeypatch.setenv("EDGEINFER_AVX2_TEST", "require")
    assert avx2_test.main([]) == 1 and "FAILED" in capsys.readouterr().out
