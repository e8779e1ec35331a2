"""`make catalogue`: write the event catalogue (docs/events/asyncapi.json and docs/events/schemas/<type>.json)
from libs/contracts. `--check` writes nothing and exits 1 when the checked-in files differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contracts.catalogue import SCHEMA_DIR, render

EVENTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "events"


def stale(root: Path = EVENTS_DIR) -> list[str]:
    """Files under `root` that differ from the rendering, are missing, or are left over."""
    files = render()
    wrong = [name for name, text in files.items() if _read(root / name) != text]
    extra = sorted(
        str(path.relative_to(root))
        for path in (root / SCHEMA_DIR).glob("*.json")
        if str(path.relative_to(root)) not in files
    )
    return sorted(wrong) + extra


def write(root: Path = EVENTS_DIR) -> list[str]:
    files = render()
    (root / SCHEMA_DIR).mkdir(parents=True, exist_ok=True)
    changed = stale(root)
    for name in changed:
        path = root / name
        if name in files:
            path.write_text(files[name], encoding="utf-8")
        else:
            path.unlink()
    return changed


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if docs/events is stale")
    args = parser.parse_args()
    if args.check:
        wrong = stale()
        for name in wrong:
            print(f"stale: docs/events/{name}")
        if wrong:
            print("run `make catalogue` and commit docs/events/")
        return 1 if wrong else 0
    changed = write()
    print(f"docs/events: {len(changed)} file(s) written or removed" if changed else "docs/events: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
