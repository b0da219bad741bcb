"""One error root: every exception class the package defines, in any module, derives from
`scale_alibi.contract.errors.ScaleAlibiError` (found by importing every module and walking them)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import scale_alibi
from scale_alibi.contract.errors import ScaleAlibiError, UserError

OPTIONAL = {"geobench", "shapefile"}  # extras a module may import at its top: such a module is skipped


def _package_exceptions() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(scale_alibi.__path__, "scale_alibi."):
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            assert exc.name and exc.name.split(".")[0] in OPTIONAL, exc
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_exception_class_of_the_package_derives_from_one_root():
    found = _package_exceptions()
    assert len(found) >= 12, sorted(found)  # the twelve the package had, and any added since
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, ScaleAlibiError))
    assert outside == [], outside


def test_the_root_keeps_the_builtin_bases_callers_catch():
    found = _package_exceptions()
    assert issubclass(found["scale_alibi.serve.stores.StoreUnavailable"], OSError)
    assert issubclass(found["scale_alibi.contract.archive.ArchiveError"], ValueError)
    assert issubclass(found["scale_alibi.contract.manifest.ManifestError"], UserError)
