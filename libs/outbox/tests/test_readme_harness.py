"""The library README's harness example is code that runs: extracted from the README and executed here, so
the documentation cannot drift from the API it shows."""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

README = Path(__file__).resolve().parents[1] / "README.md"


def example(section: str) -> str:
    text = README.read_text()
    start = text.index(section)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)  # type: ignore[union-attr]


async def test_the_readme_harness_example_passes() -> None:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(example("## Testing handlers"), str(README), "exec"), namespace)
    await cast(Callable[[], Awaitable[None]], namespace["test_a_parcels_moves"])()


def test_the_readme_consumer_example_compiles() -> None:
    compile(example("## Consuming: handlers"), str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
