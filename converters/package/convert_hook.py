"""``edgeinfer convert --package TARGETS``: targets checked before converting, packages made after."""
from __future__ import annotations

from pathlib import Path

from edgeinfer.errors import EdgeInferError
from edgeinfer.profiles import load_profile

from ..bundle_writer import check_target
from . import PackageOptions, expand_targets, package_bundle, summary_lines

NEEDS = {"android": "tflite", "ios": "coreml", "ort-mobile": "onnx"}


class PackageAfterConvert:
    """Checks the targets against the formats the conversion will write; ``run(bundles)`` packages each
    bundle into ``OUT/<bundle>-package/`` (all targets of a bundle or none)."""

    def __init__(self, model: Path, targets: list[str], profiles, formats: list[str] | None, out_dir: Path, force: bool,
                 progress: bool):
        self.targets = expand_targets(targets)
        self.out_dir, self.force, self.progress = Path(out_dir), force, progress
        for prof in profiles:
            have = formats or load_profile(prof).preferred_formats
            for t in self.targets:
                if NEEDS[t] not in have:
                    raise EdgeInferError(f"--package {t} needs the {NEEDS[t]} format but the {prof} bundle gets only "
                                         f"{','.join(have)}; add --formats {','.join(have)},{NEEDS[t]}")
            check_target(self.out_dir / f"{Path(model).stem}-{load_profile(prof).name}-package", force)

    def run(self, bundles: list[Path]) -> list[str]:
        lines = []
        for b in bundles:
            out = self.out_dir / f"{Path(b).name}-package"
            res = package_bundle(PackageOptions(bundle=Path(b), targets=self.targets, out_dir=out, force=self.force,
                                                progress=self.progress))
            lines.extend(summary_lines(res))
        return lines
