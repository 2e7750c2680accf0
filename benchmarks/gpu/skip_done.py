"""pytest plugin used by run.sh to resume a GPU test run that hit the device's time limit.

With GPU_TESTS_DONE=<junit xml of an earlier run>, the tests that passed or were skipped there are
deselected, so only those that failed or never ran run again. Loaded with `-p skip_done`
(benchmarks/gpu on PYTHONPATH).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET


def _finished(path: str) -> set[tuple[str, str]]:
    done = set()
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            done.add((case.get("classname"), case.get("name")))
    return done


def _junit_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) as pytest's junitxml writes them for a node id."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def pytest_collection_modifyitems(config, items):
    path = os.environ.get("GPU_TESTS_DONE")
    if not path:
        return
    done = _finished(path)
    keep, drop = [], []
    for item in items:
        (drop if _junit_key(item.nodeid) in done else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
