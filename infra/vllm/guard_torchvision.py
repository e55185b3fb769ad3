"""Make torchvision importable beside CPU torch when its C ops cannot load.

PyPI's torchvision 0.28 is a CUDA build; beside CPU torch its C extension does not load, and
two unguarded ``@torch.library.register_fake("torchvision::nms")`` / ``("torchvision::qnms")``
decorators in ``torchvision/_meta_registrations.py`` then abort ``import torchvision``
("operator torchvision::nms does not exist"). This rewrites those two decorators to apply only
when ``torchvision.extension._has_ops()`` is true. Idempotent; run with the venv's python.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

GUARD = "_vlac_guard"


HELPER = (f"def {GUARD}(name):\n"
          "    from torchvision.extension import _has_ops\n"
          "    if _has_ops():\n"
          "        return torch.library.register_fake(name)\n"
          "    return lambda fn: fn\n\n\n")
PATTERN = re.compile(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)$', re.M)


def guard(path: Path) -> str:
    """Guard the two registrations in ``path``: "guarded", "already guarded", or raises
    ValueError when the file does not hold them as torchvision 0.28 does."""
    text = path.read_text()
    if GUARD in text:
        return "already guarded"
    if len(PATTERN.findall(text)) != 2:
        raise ValueError(f"{path}: the nms/qnms registrations are not where torchvision 0.28 "
                         "has them; check whether `import torchvision` works as it is")
    first = PATTERN.search(text).start()  # the helper goes just above the first of them
    text = text[:first] + HELPER + text[first:]
    path.write_text(PATTERN.sub(lambda m: f'@{GUARD}("torchvision::{m.group(1)}")', text))
    return "guarded"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed in this environment: nothing to guard")
        return 0
    path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
    try:
        print(f"{path}: {guard(path)}")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
