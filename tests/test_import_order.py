"""The import-order rule, kept by one test instead of by convention: ``import unsloth`` patches TRL (and
transformers) when it runs, so no package module may import TRL before the model backend is chosen
(``model.select_backend``, which imports Unsloth when it will be used; every stage calls it first, through
``stages.setup.prepare_stage``). Only the trainers and their arguments (``degrpo_config``), which the stages import
after that, may import TRL at module level; this test names any other module that brings TRL in when it is imported."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, user_env

# Imported by the stages after select_backend has run: may import TRL at module level (DeGRPOConfig subclasses
# GRPOConfig, so Unsloth's when Unsloth runs).
AFTER_THE_BACKEND = ("thinkless_lite.trainers", "thinkless_lite.degrpo_config")

PROBE = """
import importlib, json, pkgutil, sys
import thinkless_lite
after = set(json.loads(sys.argv[1]))
names = sorted(m.name for m in pkgutil.walk_packages(thinkless_lite.__path__, "thinkless_lite.")
               if not m.name.startswith("thinkless_lite.recipes"))
offenders = []
for name in sorted(names, key=lambda n: n in after):  # the allowed ones last: they would hide the others
    had = "trl" in sys.modules
    importlib.import_module(name)
    if not had and "trl" in sys.modules and name not in after:
        offenders.append(name)
print(json.dumps({"offenders": offenders, "checked": len(names)}))
"""


def test_no_package_module_imports_trl_before_the_backend_is_chosen():
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(AFTER_THE_BACKEND)], capture_output=True,
                          text=True, cwd=REPO, env=user_env(PYTHONPATH=str(REPO)), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["checked"] > 30  # the walk found the package's modules
    assert result["offenders"] == [], (
        f"importing {result['offenders']} imports TRL (in the module or one it imports); import TRL inside the "
        "function that needs it, which runs after model.select_backend (Unsloth must be imported before TRL)")
