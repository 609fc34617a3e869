"""Audit the installed packages against published advisories with pip-audit (PyPI's service).

    python scripts/audit.py              # the environment of this Python (run it with the venv's)
    python scripts/audit.py -s osv       # any further options go to pip-audit

Prints each known vulnerability (package, version, advisory and its aliases, fixed versions)
and each package it could not audit. Exit 0: nothing known; 1: vulnerabilities; 2: some
package could not be audited (offline, or an index without PyPI's JSON API), so "nothing
found" would not mean "nothing there". The project's own editable install is not audited: it
is not on PyPI. Not part of CI's pass or fail: advisories appear without any change here.
Needs `pip install -e '.[audit]'`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys


def main(extra: list[str]) -> int:
    if importlib.util.find_spec("pip_audit") is None:
        print(f"audit: pip-audit is not installed for {sys.executable}: pip install -e '.[audit]'",
              file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
               "--skip-editable", "--aliases", "on", "--desc", "off", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(done.stderr.strip() or done.stdout.strip(), file=sys.stderr)
        print(f"audit: pip-audit failed (exit {done.returncode}) before it audited anything",
              file=sys.stderr)
        return 2
    editable = _editable_names()
    vulnerable, unaudited, audited = [], [], 0
    for dependency in report.get("dependencies", []):
        if "skip_reason" in dependency:
            if dependency["name"].lower() not in editable:
                unaudited.append(dependency)
            continue
        audited += 1
        for vuln in dependency.get("vulns", []):
            vulnerable.append((dependency, vuln))
    for dependency, vuln in vulnerable:
        aliases = ", ".join(vuln.get("aliases", [])) or "-"
        fixed = ", ".join(vuln.get("fix_versions", [])) or "none yet"
        print(f"{dependency['name']} {dependency['version']}: {vuln['id']} ({aliases}), fixed in {fixed}")
    for dependency in unaudited:
        print(f"not audited: {dependency['name']}: {dependency['skip_reason']}")
    print(f"audit: {audited} packages audited, {len(vulnerable)} known vulnerabilities, "
          f"{len(unaudited)} packages not audited")
    if vulnerable:
        return 1
    return 2 if unaudited else 0


def _editable_names() -> set[str]:
    """The names of editable installs (this project): pip-audit skips them on purpose."""
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--editable", "--format", "json"],
                            capture_output=True, text=True)
    try:
        return {entry["name"].lower() for entry in json.loads(listed.stdout)}
    except (json.JSONDecodeError, KeyError, TypeError):
        return set()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
